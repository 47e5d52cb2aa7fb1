"""bitsandbytes' CUDA kernels in real runs: 8-bit and paged 8-bit AdamW state, int8 and NF4
linear weights; every checkpoint tested again on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from gpu_runs import (
    assert_same_test_metrics,
    evaluate_on_cpu,
    overrides,
    require_module,
    train,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _bitsandbytes() -> None:
    require_module("bitsandbytes", 'pip install -e ".[bnb]"')


def _tensors(state: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) optimizer state (bitsandbytes wraps its quantized state)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
    elif isinstance(state, list | tuple):
        for value in state:
            yield from _tensors(value)


@pytest.mark.parametrize("optimizer", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizer_trains_on_gpu(optimizer: str, tmp_path: Path) -> None:
    run = train(overrides(optimizer), tmp_path)
    assert run.summary["test"]["acc"] > 0.8, run.summary
    last = torch.load(run.folder / "checkpoints" / "last.ckpt", weights_only=True)
    dtypes = {t.dtype for t in _tensors(last["optimizer_states"][0]["state"])}
    assert torch.uint8 in dtypes, f"no 8-bit optimizer state in last.ckpt: {dtypes}"

    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path))


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_linear_weights_quantize_on_gpu_and_evaluate_on_cpu(mode: str, tmp_path: Path) -> None:
    run = train(overrides(f"bnb_{mode}"), tmp_path)
    section = run.summary["compression"]["bnb_weights"]
    assert section["layers"], section
    assert section["size_ratio"] < (1 / 3 if mode == "int8" else 1 / 4), section
    before, after = section["before"]["test_acc"], section["after"]["test_acc"]
    assert before > 0.8 and abs(after - before) < 0.03, section
    assert run.summary["test"]["acc"] == pytest.approx(after, abs=1e-6)  # tested quantized

    # the best checkpoint was written during fit: fp32 weights, tested as such on CPU ...
    plain = evaluate_on_cpu(run.best, tmp_path / "fp32")
    assert plain["test"]["acc"] == pytest.approx(before, abs=0.01)
    # ... and quantized on CPU by the same callback, as docs/quantization.md shows
    callback = [
        "+callbacks.bnb._target_=slimlab.compression.bnb_weights.BitsAndBytesWeights",
        f"+callbacks.bnb.mode={mode}",
    ]
    quantized = evaluate_on_cpu(run.best, tmp_path / mode, callback)
    assert quantized["test"]["acc"] == pytest.approx(after, abs=0.02)
