"""The contract's own parts: structure restorers found by kind without the models package naming
compression, checkpoints that reload in a fresh process, parameter counts of quantized nets."""

from __future__ import annotations

import copy
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from conftest import ROOT
from slimlab.models import ImageClassifier, count_parameters, register_structure_restorer
from slimlab.models.base import RESTORER_GROUP, structure_restorer
from slimlab.models.nets import MLP
from slimlab.utils.errors import ConfigError

NET = {"_target_": "slimlab.models.nets.SmallCNN", "widths": [8, 16]}
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.003}


def test_slimlabs_restorers_are_declared_as_entry_points() -> None:
    from slimlab.compression.pruning import restore_pruning
    from slimlab.compression.quantization import restore_quantization

    declared = {ep.name: ep.value for ep in metadata.entry_points(group=RESTORER_GROUP)}
    assert declared == {
        "prune": "slimlab.compression.pruning:restore_pruning",
        "qat": "slimlab.compression.quantization:restore_quantization",
        "bnb": "slimlab.compression.bnb_weights:restore_bnb",
    }
    assert structure_restorer("prune") is restore_pruning
    assert structure_restorer("qat") is restore_quantization


def test_unknown_kind_names_the_known_ones_and_how_to_register() -> None:
    with pytest.raises(ConfigError, match=r"kind='sparsify' has no restorer: known kinds are \["):
        structure_restorer("sparsify")


def test_a_restorer_registered_at_run_time_replays_its_entries() -> None:
    def widen_head(module, entry) -> None:
        module.net.classifier = nn.Linear(module.net.classifier.in_features, entry["classes"])

    register_structure_restorer("test_widen_head", widen_head)
    module = ImageClassifier(net=NET, optimizer=OPTIMIZER)
    module.replay_structure([{"kind": "test_widen_head", "classes": 12}])
    assert module.net.classifier.out_features == 12
    assert module.structure_log == [{"kind": "test_widen_head", "classes": 12}]


def test_quantized_weights_count_as_the_float_weights_they_replace() -> None:
    pytest.importorskip("bitsandbytes")
    from slimlab.compression.bnb_weights import quantize_linear_weights

    net = MLP(hidden=(64,))
    dense = count_parameters(net)
    for mode in ("int8", "nf4"):
        quantized = copy.deepcopy(net)
        quantize_linear_weights(quantized, mode)
        assert count_parameters(quantized) == dense, mode


FRESH_PROCESS = """
import sys, torch
from slimlab.models import load_module
assert not any(m.startswith("slimlab.compression") for m in sys.modules), "imported compression"
x = torch.load(sys.argv[1], weights_only=True)
for path, key in ((sys.argv[2], "last"), (sys.argv[3], "int8")):
    module = load_module(path).eval()
    torch.testing.assert_close(module(x), torch.load(sys.argv[4], weights_only=True)[key])
    print(key, [e["kind"] + ":" + str(e.get("stage")) for e in module.structure_log])
"""


@pytest.mark.slow
def test_pruned_and_quantized_checkpoints_load_in_a_process_that_imported_only_models(
    tmp_path: Path,
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from slimlab.compression.pruning import StructuredPruning
    from slimlab.compression.quantization import QuantizationAwareTraining
    from slimlab.data import DigitsDataModule

    model = ImageClassifier(net=NET, optimizer=OPTIMIZER)
    model.run_config = {"model": {"_target_": "slimlab.models.ImageClassifier"}}
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        callbacks=[
            StructuredPruning(start_epoch=0, report=False),
            QuantizationAwareTraining(start_epoch=1, report=False),
            best,
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    int8 = best.best_model_path
    assert int8.endswith("-int8.ckpt")
    x = torch.randn(4, 1, 8, 8)
    expected = {"int8": model.eval()(x)}
    last = ImageClassifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    expected["last"] = last.eval()(x)
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "expected.pt")

    args = [
        str(tmp_path / "x.pt"),
        str(tmp_path / "last.ckpt"),
        int8,
        str(tmp_path / "expected.pt"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "last ['prune:None', 'qat:prepare']" in proc.stdout
    assert "int8 ['prune:None', 'qat:prepare', 'qat:convert']" in proc.stdout
