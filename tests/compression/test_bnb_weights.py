"""bitsandbytes weights: linear layers quantize to int8/NF4/FP4, report and reload."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from slimlab.compression import bnb_weights
from slimlab.compression.measure import size_on_disk
from slimlab.data import DigitsDataModule
from slimlab.models import ImageClassifier
from slimlab.models.base import load_module
from slimlab.models.nets import MLP
from slimlab.utils.errors import ConfigError

pytest.importorskip("bitsandbytes")


def test_bad_mode_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="compression.bnb_weights.mode='int4'"):
        bnb_weights.BitsAndBytesWeights(mode="int4")


@pytest.mark.parametrize("mode", ["int8", "nf4", "fp4"])
def test_linear_weights_quantize_close_to_fp32(mode: str) -> None:
    torch.manual_seed(0)
    net = MLP(hidden=(256, 128)).eval()
    x = torch.randn(32, 1, 8, 8)
    quantized = copy.deepcopy(net)
    names = bnb_weights.quantize_linear_weights(quantized, mode)
    assert names == ["features.1", "features.5", "classifier"]
    error = (quantized(x) - net(x)).abs().max() / net(x).abs().max()
    assert error < (0.02 if mode == "int8" else 0.2), error
    assert size_on_disk(quantized) < size_on_disk(net) / (3 if mode == "int8" else 4)


def test_weights_callback_reports_and_checkpoint_reloads(tmp_path: Path) -> None:
    model = ImageClassifier(
        net={"_target_": "slimlab.models.nets.MLP", "hidden": [128]},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.003},
    )
    model.run_config = {"model": {"_target_": "slimlab.models.ImageClassifier"}}
    data = DigitsDataModule(batch_size=128)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[bnb_weights.BitsAndBytesWeights(mode="nf4")],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    (result,) = trainer.test(model, data)
    section = model.compression_report["bnb_weights"]
    assert section["size_ratio"] < 0.5  # 4-bit linear weights; norms and biases stay fp32
    assert abs(section["test_acc_change"]) < 0.05, section
    assert section["after"]["test_acc"] == pytest.approx(result["test/acc"], abs=1e-6)
    json.dumps(model.compression_report)  # plain data for metrics.json

    path = tmp_path / "checkpoints" / "nf4.ckpt"  # written by the callback once quantized
    assert section["checkpoint"] == str(path) and path.is_file()
    loaded = load_module(str(path))
    assert [e["kind"] for e in loaded.structure_log] == ["bnb"]
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
