"""What of the GPU suite a CPU can check: every command it runs composes through Hydra's compose
API into the run it means, and without CUDA every `gpu` test skips with the reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gpu_runs import (
    COMPRESSION,
    RUNS,
    SHARDED,
    assert_refused_at_setup,
    overrides,
    sharded_overrides,
)

import conftest
from conftest import ROOT, compose_config

VALUES = {"teacher": "/runs/teacher/checkpoints/epoch_002.ckpt", "devices": 2, "batch_size": 64}
STRATEGIES = {
    "ddp": "ddp",
    "fsdp": "lightning.pytorch.strategies.FSDPStrategy",
    "deepspeed": "lightning.pytorch.strategies.DeepSpeedStrategy",
}


def _strategy(cfg) -> str:
    strategy = cfg.trainer.get("strategy", "auto")
    return strategy if isinstance(strategy, str) else strategy._target_


@pytest.mark.slow  # ~1 s a composition, 24 of them
@pytest.mark.parametrize("name", list(RUNS))
def test_every_gpu_run_composes_on_the_gpu(name: str, tmp_path: Path) -> None:
    args = overrides(name, **VALUES)
    assert not any("{" in arg for arg in args), args  # every placeholder filled
    cfg = compose_config(tmp_path, args)
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.max_epochs <= 5
    assert cfg.callbacks.get("rich_progress_bar") is None
    precision = {"bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}.get(name)
    if precision:
        assert cfg.trainer.precision == precision
    if name in STRATEGIES:
        assert _strategy(cfg) == STRATEGIES[name]
    if name == "ddp":
        assert cfg.trainer.devices == 2 and cfg.data.batch_size == 64
    if name in ("distill", "recipe"):
        assert cfg.compression.distill.teacher_ckpt == VALUES["teacher"]
    if name.startswith("bnb_"):
        assert cfg.compression.bnb_weights.mode == name.removeprefix("bnb_")
    if name in ("qat", "recipe"):
        assert cfg.compression.qat.convert is True  # the int8 model, as a user gets it
    if name == "qat_fake_quant":
        assert cfg.compression.qat.convert is False


@pytest.mark.slow
@pytest.mark.parametrize("strategy", SHARDED)
@pytest.mark.parametrize("compression", list(COMPRESSION))
def test_every_sharded_compression_run_composes(
    compression: str, strategy: str, tmp_path: Path
) -> None:
    cfg = compose_config(tmp_path, sharded_overrides(compression, strategy, **VALUES))
    assert _strategy(cfg) == STRATEGIES[strategy]
    assert cfg.trainer.devices == 1
    assert list(cfg.compression) == [compression]


def test_skip_reason_names_the_missing_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = conftest.cuda_skip_reason()
    assert reason and "torch.cuda.is_available() is False" in reason
    assert "scripts/gpu_check.sh" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert conftest.cuda_skip_reason() is None


@pytest.mark.slow
def test_without_cuda_every_gpu_test_skips_with_the_reason() -> None:
    # CUDA hidden, so this holds on a GPU machine too; `-m gpu` as scripts/gpu_check.sh runs it
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/gpu",
            "-m",
            "gpu",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    skipped = int(re.search(r"(\d+) skipped", summary).group(1))
    assert not re.search(r"\d+ (passed|failed|error)", summary), summary
    assert skipped >= len(RUNS), summary  # every run is at least one test
    reasons = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all("torch.cuda.is_available() is False" in r for r in reasons), reasons


@pytest.mark.parametrize("strategy", SHARDED)
def test_refusal_check_accepts_pruning_refusing_a_sharded_strategy(
    strategy: str, compose_cfg, tmp_path: Path
) -> None:
    """The GPU tests' "refuses clearly" criterion holds for the real refusal pruning gives."""
    from hydra.utils import instantiate

    from slimlab.compression.pruning import StructuredPruning
    from slimlab.utils.errors import ConfigError

    if strategy == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is an optional, GPU-only dependency")
    cfg = compose_cfg(["experiment=digits_prune", f"trainer={strategy}"])
    trainer = SimpleNamespace(
        strategy=instantiate(cfg.trainer.strategy), max_epochs=3, fast_dev_run=False
    )
    module = instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ConfigError) as refusal:
        StructuredPruning().setup(trainer, module, "fit")
    proc = SimpleNamespace(returncode=2, stdout="", stderr=f"Error: {refusal.value}\n")
    assert_refused_at_setup(proc, "prune", strategy, tmp_path)

    crashed = SimpleNamespace(returncode=2, stdout="", stderr="Traceback (most recent call...")
    with pytest.raises(AssertionError):
        assert_refused_at_setup(crashed, "prune", strategy, tmp_path)
