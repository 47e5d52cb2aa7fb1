"""bitsandbytes weights: linear layers quantize to int8/NF4/FP4, report and reload (an MLP here;
our ViT and a tiny BERT through train.py, then eval.py on the checkpoint the callback wrote)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from conftest import QUIET, compose_config
from slimlab.compression import bnb_weights
from slimlab.compression.measure import inputs_and_labels, size_on_disk
from slimlab.data import DigitsDataModule
from slimlab.eval import evaluate
from slimlab.models import ImageClassifier
from slimlab.models.base import call_net, load_module, logits_of
from slimlab.models.nets import MLP
from slimlab.train import train
from slimlab.utils.errors import ConfigError

bnb = pytest.importorskip("bitsandbytes")


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


# -- transformers: train.py quantizes the tested checkpoint, eval.py reloads the file it wrote ----
VIT = [
    "experiment=digits_vit",
    "model.net.dim=32",
    "model.net.depth=1",
    "model.net.heads=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=2",
]
BERT = ["experiment=text_tiny_bert", "data.num_train=64", "data.num_test=32"]


@pytest.mark.parametrize("mode", ["int8", "nf4"])
@pytest.mark.parametrize("net", [VIT, BERT], ids=["vit", "bert"])
def test_transformer_reloads_quantized_from_its_own_checkpoint_through_eval(
    tmp_path: Path, net: list[str], mode: str
) -> None:
    cfg = compose_config(
        tmp_path,
        [
            *QUIET,
            *net,
            "trainer.max_epochs=1",
            "compression=bnb_weights",
            f"compression.bnb_weights.mode={mode}",
            "compression.bnb_weights.report.latency=false",
        ],
    )
    metrics, objects = train(cfg)
    section = objects["model"].compression_report["bnb_weights"]
    best = objects["trainer"].checkpoint_callback.best_model_path
    path = Path(best).with_name(f"{Path(best).stem}-{mode}.ckpt")  # beside the tested one
    assert section["checkpoint"] == str(path) and path.is_file()

    eval_cfg = compose_config(
        tmp_path / "eval", [f"ckpt_path={path}", "trainer.limit_test_batches=2"], "eval"
    )
    eval_metrics, eval_objects = evaluate(eval_cfg)
    GlobalHydra.instance().clear()
    quantized, loaded = objects["model"].net.eval(), eval_objects["model"].net.eval()
    linears = {name: m for name, m in loaded.named_modules() if isinstance(m, nn.Linear)}
    assert sorted(linears) == sorted(section["layers"])  # every linear layer, none left fp32
    for name, m in linears.items():
        if mode == "int8":
            assert isinstance(m, bnb.nn.Linear8bitLt) and m.weight.dtype == torch.int8, name
        else:  # two 4-bit NF4 codes per byte, scaled by their block's absmax
            assert isinstance(m, bnb.nn.Linear4bit) and m.weight.dtype == torch.uint8, name
            assert m.weight.quant_state.quant_type == "nf4", name
    batch = next(iter(eval_objects["datamodule"].test_dataloader()))
    inputs, _ = inputs_and_labels(batch)
    with torch.no_grad():
        torch.testing.assert_close(
            logits_of(call_net(loaded, inputs)), logits_of(call_net(quantized, inputs))
        )
    assert float(eval_metrics["test/acc"]) == pytest.approx(float(metrics["test/acc"]), abs=1e-6)
