"""Compression callbacks on CUDA: pruning's re-wrap, QAT's prepare/convert device moves, the
teacher on the student's device, and the full recipe; each checkpoint tested again on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_runs import (
    Run,
    assert_same_test_metrics,
    evaluate_on_cpu,
    overrides,
    shared_run,
    train,
)

pytestmark = pytest.mark.gpu


@pytest.fixture
def teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A digits CNN trained on the GPU (the fp32 run): the teacher, and the recipe's start."""
    return shared_run("fp32", tmp_path_factory).best


def _structure(run: Run) -> list[tuple]:
    saved = torch.load(run.best, map_location="cpu", weights_only=True)
    return [(e["kind"], e.get("stage")) for e in saved["slimlab"]["structure"]]


def test_pruning_on_gpu(tmp_path: Path) -> None:
    run = train(overrides("prune"), tmp_path)
    pruning = run.summary["compression"]["pruning"]
    assert pruning["params_ratio"] < 0.5, pruning  # half the channels: ~a quarter of the params
    assert run.summary["test"]["acc"] > 0.7, run.summary
    assert _structure(run) == [("prune", None)]

    evaluated = evaluate_on_cpu(run.best, tmp_path)
    assert evaluated["params"] == run.summary["params"]  # rebuilt pruned, on CPU
    assert_same_test_metrics(run.summary, evaluated)


def test_qat_on_gpu_ends_in_an_int8_checkpoint(tmp_path: Path) -> None:
    run = train(overrides("qat"), tmp_path)
    assert run.best.endswith("-int8.ckpt"), run.best
    assert _structure(run) == [("qat", "prepare"), ("qat", "convert")]
    quantization = run.summary["compression"]["quantization"]
    assert quantization["size_ratio"] < 0.35, quantization
    assert run.summary["test"]["acc"] > 0.7, run.summary

    # the int8 model runs on CPU kernels: eval.py must reproduce the run's test exactly
    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path))


def test_qat_fake_quantized_network_tests_on_gpu(tmp_path: Path) -> None:
    run = train(overrides("qat_fake_quant"), tmp_path)
    assert _structure(run) == [("qat", "prepare")]
    assert run.summary["test"]["acc"] > 0.7, run.summary
    assert_same_test_metrics(run.summary, evaluate_on_cpu(run.best, tmp_path))


def test_distillation_on_gpu(tmp_path: Path, teacher: str) -> None:
    run = train(overrides("distill", teacher=teacher), tmp_path)
    distillation = run.summary["compression"]["distillation"]
    assert distillation["student_params"] < distillation["teacher_params"] / 10, distillation
    assert 0.8 < distillation["teacher_test_acc"] <= 1.0, distillation
    assert run.summary["test"]["acc"] > 0.5, run.summary  # a 3.6k-parameter student, 3 epochs

    evaluated = evaluate_on_cpu(run.best, tmp_path)
    assert evaluated["params"] == run.summary["params"]  # the student only, no teacher
    assert_same_test_metrics(run.summary, evaluated)


def test_full_recipe_on_gpu(tmp_path: Path, teacher: str) -> None:
    run = train(overrides("recipe", teacher=teacher), tmp_path)
    report = run.summary["compression"]
    assert set(report) >= {"pruning", "distillation", "quantization"}, report
    assert report["distillation"]["vs_teacher"]["size_ratio"] < 0.15, report["distillation"]
    assert _structure(run) == [
        ("prune", None),
        ("prune", None),
        ("qat", "prepare"),
        ("qat", "convert"),
    ]
    assert run.summary["test"]["acc"] > 0.7, run.summary

    evaluated = evaluate_on_cpu(run.best, tmp_path)
    assert evaluated["params"] == run.summary["params"]
    assert_same_test_metrics(run.summary, evaluated)
