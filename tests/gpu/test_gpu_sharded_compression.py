"""Each compression callback under `trainer=fsdp` and `trainer=deepspeed` (one GPU) either works
(the run passes and its checkpoint tests the same on CPU) or refuses at setup: exit code 2 and
one line naming the strategies it supports. A traceback, a hang or a crash mid-run fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_runs import (
    COMPRESSION,
    RUN_TIMEOUT_S,
    SHARDED,
    assert_refused_at_setup,
    assert_same_test_metrics,
    evaluate_on_cpu,
    finished_run,
    require_module,
    sharded_overrides,
    shared_run,
)

from conftest import run_cli

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy", SHARDED)
@pytest.mark.parametrize("compression", list(COMPRESSION))
def test_compression_under_a_sharded_strategy_works_or_refuses_clearly(
    compression: str,
    strategy: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if strategy == "deepspeed":
        require_module("deepspeed", "pip install --no-build-isolation deepspeed")
    if compression == "bnb_weights":
        require_module("bitsandbytes", 'pip install -e ".[bnb]"')
    teacher = shared_run("fp32", tmp_path_factory).best if compression == "distill" else ""
    args = sharded_overrides(compression, strategy, teacher=teacher)
    proc = run_cli("train.py", args, tmp_path, timeout=RUN_TIMEOUT_S, check=False)
    if proc.returncode == 2:
        assert_refused_at_setup(proc, compression, strategy, tmp_path)
        return
    assert proc.returncode == 0, (
        f"neither worked nor refused (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    )
    run = finished_run(tmp_path)
    evaluated = evaluate_on_cpu(run.best, tmp_path)
    assert evaluated["params"] == run.summary["params"]
    assert_same_test_metrics(run.summary, evaluated, "bf16-mixed")
