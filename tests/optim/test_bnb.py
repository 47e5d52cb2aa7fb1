"""bitsandbytes 8-bit optimizers: train with 8-bit state, bad names fail clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from slimlab.optim import bnb_optimizer
from slimlab.train import train
from slimlab.utils.errors import ConfigError
from slimlab.utils.optional import import_optional

pytest.importorskip("bitsandbytes")

FAST = ["callbacks.rich_progress_bar=null", "logger=none", "test=false"]


def test_adamw8bit_trains_with_8bit_state(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, [*FAST, "optimizer=adamw8bit", "trainer.max_epochs=2"])
    metrics, objects = train(cfg)
    assert float(metrics["val/acc"]) > 0.5
    (optimizer,) = objects["trainer"].optimizers
    assert type(optimizer).__name__ == "AdamW8bit"
    dtypes = {s["state1"].dtype for s in optimizer.state.values()}
    assert torch.uint8 in dtypes  # large tensors hold 8-bit state


def test_bad_optimizer_name_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="model.optimizer.name='AdamW4bit'"):
        bnb_optimizer([torch.nn.Parameter(torch.zeros(2))], name="AdamW4bit")


def test_missing_bitsandbytes_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[bnb\]"'):
        import_optional("bitsandbytes", "bnb")
