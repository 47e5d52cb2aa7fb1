"""The full recipe in one run: prune while distilling from the unpruned teacher, then QAT,
ending in a small int8 model whose checkpoint reloads and evals like the run tested it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import QUIET, compose_config
from slimlab.eval import evaluate
from slimlab.models.base import load_module
from slimlab.train import train
from slimlab.utils.errors import ConfigError

LIMITS = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


@pytest.fixture(scope="module")
def dense_teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digits CNN (default widths), briefly trained: the teacher and the student's start."""
    tmp = tmp_path_factory.mktemp("dense")
    cfg = compose_config(tmp, [*QUIET, *LIMITS, "trainer.max_epochs=2", "test=false"])
    _, objects = train(cfg)
    return objects["trainer"].checkpoint_callback.best_model_path


@pytest.mark.slow
def test_digits_compress_prunes_distills_and_quantizes_in_one_run(
    tmp_path: Path, dense_teacher: str
) -> None:
    cfg = compose_config(
        tmp_path / "recipe",
        [
            "experiment=digits_compress",
            *QUIET,
            *LIMITS,
            "trainer.limit_test_batches=2",
            # the showcase's schedule, shortened: prune at epochs 0 and 1, QAT from epoch 3
            "trainer.max_epochs=5",
            "compression.prune.steps=2",
            "compression.prune.end_epoch=2",
            "compression.prune.report.latency=false",
            "compression.qat.start_epoch=3",
            "compression.qat.freeze_bn_epoch=4",
            "compression.qat.freeze_observer_epoch=4",
            "compression.distill.report.latency=false",
            f"compression.distill.teacher_ckpt={dense_teacher}",
        ],
    )
    metrics, objects = train(cfg)
    assert float(metrics["train/kd"]) > 0

    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    report = summary["compression"]
    assert set(report) >= {"pruning", "quantization", "distillation"}
    distillation = report["distillation"]
    assert 0 < distillation["student_params"] < distillation["teacher_params"] / 3
    vs_teacher = distillation["vs_teacher"]
    assert vs_teacher["params_ratio"] < 0.35  # half the channels: about a quarter of the params
    assert vs_teacher["size_ratio"] < 0.15  # ... and int8 weights
    assert 0.0 <= distillation["teacher_test_acc"] <= 1.0

    # the tested checkpoint is the int8 model: it opens without unpickling code, holds the
    # student only, and rebuilds (pruned, then quantized) into the same int8 network
    best = summary["best_checkpoint"]
    saved = torch.load(best, weights_only=True)
    kinds = [(e["kind"], e.get("stage")) for e in saved["slimlab"]["structure"]]
    assert kinds == [("prune", None), ("prune", None), ("qat", "prepare"), ("qat", "convert")]
    assert all(k.startswith("net.") for k in saved["state_dict"])
    reloaded = load_module(best)
    assert any(b.dtype == torch.int8 for b in reloaded.net.buffers())  # int8 weights
    x = torch.randn(8, 1, 8, 8)
    torch.testing.assert_close(reloaded.net(x), objects["model"].net(x))

    eval_cfg = compose_config(
        tmp_path / "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=2"], "eval"
    )
    eval_metrics, _ = evaluate(eval_cfg)
    for key in ("test/acc", "test/loss"):
        assert float(eval_metrics[key]) == pytest.approx(float(metrics[key]), abs=1e-5), key


@pytest.mark.parametrize("order", ["[distill,prune]", "[qat,distill]"])
def test_compression_out_of_order_fails_before_training(
    tmp_path: Path, dense_teacher: str, order: str
) -> None:
    cfg = compose_config(
        tmp_path,
        [
            *QUIET,
            *LIMITS,
            "trainer.max_epochs=3",
            f"compression={order}",
            f"compression.distill.teacher_ckpt={dense_teacher}",
        ],
    )
    with pytest.raises(ConfigError, match="prune -> distill -> quantize"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_feature_pairs_with_qat_fail_before_training(tmp_path: Path, dense_teacher: str) -> None:
    cfg = compose_config(
        tmp_path,
        [
            *QUIET,
            *LIMITS,
            "trainer.max_epochs=3",
            "compression=[distill,qat]",
            "compression.qat.start_epoch=1",
            f"compression.distill.teacher_ckpt={dense_teacher}",
            "compression.distill.feature_pairs=[[features.4,features.4]]",
        ],
    )
    with pytest.raises(ConfigError, match="feature_pairs=.* cannot be combined with"):
        train(cfg)


@pytest.mark.parametrize("ignored", [False, True])
def test_pruning_a_paired_layer_fails_clearly_unless_it_is_kept(
    tmp_path: Path, dense_teacher: str, ignored: bool
) -> None:
    overrides = [
        *QUIET,
        *LIMITS,
        "trainer.max_epochs=2",
        "trainer.limit_test_batches=2",
        "compression=[prune,distill]",
        "compression.prune.start_epoch=1",
        "compression.prune.report.latency=false",
        f"compression.distill.teacher_ckpt={dense_teacher}",
        "compression.distill.feature_pairs=[[features.4,features.4]]",
    ]
    if ignored:  # the conv that produces features.4 keeps its channels
        overrides.append("compression.prune.ignored_layers=[features.4.0]")
    cfg = compose_config(tmp_path, overrides)
    if not ignored:
        with pytest.raises(ConfigError, match="'features.4' changed width from 128 to 64"):
            train(cfg)
        return
    metrics, _ = train(cfg)
    assert float(metrics["train/kd_feat"]) > 0
