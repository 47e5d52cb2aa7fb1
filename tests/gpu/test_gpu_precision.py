"""One GPU, three precisions: a real `trainer=gpu` run each, its checkpoint tested again on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_runs import assert_same_test_metrics, evaluate_on_cpu, overrides, shared_run, train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "16-mixed"])
def test_trains_on_gpu_and_the_checkpoint_tests_the_same_on_cpu(
    precision: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16 support")
    if precision == "fp32":  # shared: also the teacher and the export source
        run = shared_run("fp32", tmp_path_factory)
    else:
        run = train(overrides(precision), tmp_path)
    assert run.summary["test"]["acc"] > 0.8, run.summary  # 3 epochs of digits; chance is 0.1
    # the weights were trained on the GPU: Lightning saves them from the device they live on
    state = torch.load(run.best, weights_only=True)["state_dict"]
    assert any(t.is_cuda for t in state.values()), "the checkpoint holds no CUDA tensors"

    evaluated = evaluate_on_cpu(run.best, tmp_path)
    assert_same_test_metrics(run.summary, evaluated, "32" if precision == "fp32" else "mixed")
    assert evaluated["params"] == run.summary["params"]
