"""Multi-process and sharded strategies on the GPUs there are: `trainer=ddp` on every visible
device, `trainer=fsdp` and `trainer=deepspeed` on one; each checkpoint tested again on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from gpu_runs import assert_same_test_metrics, evaluate_on_cpu, overrides, require_module, train

pytestmark = pytest.mark.gpu

DIGITS_TEST_IMAGES = 270


def test_ddp_on_every_visible_gpu(tmp_path: Path) -> None:
    devices = torch.cuda.device_count()
    batch_size = devices * math.ceil(64 / devices)  # the global batch must divide by the ranks
    run = train(overrides("ddp", devices=devices, batch_size=batch_size), tmp_path)
    assert run.summary["test"]["acc"] > 0.8, run.summary
    if devices > 1:
        assert (run.folder / "train_rank1.log").is_file(), "rank 1 did not run in the job folder"
    # under N ranks the test sampler pads the 270 images with up to N - 1 repeats
    padding = (devices - 1) / DIGITS_TEST_IMAGES
    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path), extra_acc=padding)


def test_fsdp_on_one_gpu(tmp_path: Path) -> None:
    run = train(overrides("fsdp"), tmp_path)
    assert run.summary["test"]["acc"] > 0.8, run.summary
    assert Path(run.best).is_file(), "state_dict_type=full must write one checkpoint file"
    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path), "bf16-mixed")


def test_deepspeed_on_one_gpu(tmp_path: Path) -> None:
    require_module(
        "deepspeed", "pip install --no-build-isolation deepspeed (scripts/gpu_check.sh)"
    )
    run = train(overrides("deepspeed"), tmp_path)
    assert run.summary["test"]["acc"] > 0.8, run.summary
    # DeepSpeed saves a checkpoint folder; eval.py is given what metrics.json names, as a
    # user would, and must test it
    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path), "bf16-mixed")
