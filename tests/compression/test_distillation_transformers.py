"""Knowledge distillation on transformers: a CNN teacher's logits into our ViT (DeiT-style, on
digits), and a wider tiny Hugging Face BERT into a narrower, shallower one with a hidden-state
pair of different widths (learned projection). KD moves the student toward its teacher."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from conftest import NO_BARS, QUIET, compose_config
from slimlab.compression import measure
from slimlab.compression.distillation import KnowledgeDistillation
from slimlab.models.base import call_net, load_module, logits_of
from slimlab.train import train


def trained(tmp: Path, overrides: list[str]) -> dict:
    """train.py's objects for one run."""
    _, objects = train(compose_config(tmp, overrides))
    GlobalHydra.instance().clear()
    return objects


def closeness(student: nn.Module, teacher: nn.Module, loader) -> tuple[float, float]:
    """(mean KL(teacher || student), share of test inputs where their top classes agree)."""
    student.eval()
    kl, agree, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            inputs, _ = measure.inputs_and_labels(batch)
            s = logits_of(call_net(student, inputs))
            t = logits_of(call_net(teacher, inputs))
            kl += float(
                F.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="sum")
            )
            agree += int((s.argmax(1) == t.argmax(1)).sum())
            seen += len(s)
    return kl / seen, agree / seen


def distilled(tmp: Path, teacher_ckpt: str, overrides: list[str]) -> dict:
    """A pure-KD run (alpha=1: the student never sees a label) from `teacher_ckpt`, with the
    student's closeness to the teacher at initialisation and after training."""
    cfg = compose_config(tmp, overrides + [f"compression.distill.teacher_ckpt={teacher_ckpt}"])
    torch.manual_seed(0)
    initial = instantiate(cfg.model.net, _convert_="object")
    _, objects = train(cfg)
    GlobalHydra.instance().clear()
    teacher = load_module(teacher_ckpt).net.eval()
    loader = objects["datamodule"].test_dataloader()
    return {
        "objects": objects,
        "before": closeness(initial, teacher, loader),
        "after": closeness(objects["model"].net, teacher, loader),
        "out": Path(cfg.paths.output_dir),
    }


KD = [
    "compression=distill",
    "compression.distill.alpha=1.0",
    "compression.distill.temperature=2.0",
    "compression.distill.report.latency=false",
]


@pytest.fixture(scope="module")
def vit_from_cnn(tmp_path_factory) -> dict:
    """DeiT-style: a small CNN teacher trained on digits, its logits distilled into a ViT."""
    tmp = tmp_path_factory.mktemp("vit_kd")
    teacher = trained(
        tmp / "teacher", [*QUIET, "experiment=digits_cnn", "trainer.max_epochs=3", "test=false"]
    )
    student = [*QUIET, "experiment=digits_vit", *KD, "trainer.max_epochs=8", "test=false"]
    student += ["model.net.dim=32", "model.net.depth=2"]
    return distilled(
        tmp / "student", teacher["trainer"].checkpoint_callback.best_model_path, student
    )


@pytest.fixture(scope="module")
def bert_from_bert(tmp_path_factory) -> dict:
    """A tiny BERT (width 64, 2 blocks) into one of width 32 and 1 block, with its block's
    output matched to the teacher's last block through a learned 32 -> 64 projection."""
    tmp = tmp_path_factory.mktemp("bert_kd")
    data = ["data.num_classes=2", "data.num_train=400", "data.num_test=100", "data.batch_size=16"]
    teacher = trained(
        tmp / "teacher",
        [*QUIET, "experiment=text_tiny_bert", *data, "trainer.max_epochs=4", "test=false"]
        + ["model.net.config.hidden_size=64", "model.net.config.num_attention_heads=4"]
        + ["model.net.config.intermediate_size=128"],
    )
    student = [*NO_BARS, "logger=csv", "experiment=text_tiny_bert", *data, *KD, "test=false"]
    student += ["trainer.max_epochs=4", "model.net.config.num_hidden_layers=1"]
    student += ["compression.distill.feature_pairs=[[bert.encoder.layer.0,bert.encoder.layer.1]]"]
    return distilled(
        tmp / "student", teacher["trainer"].checkpoint_callback.best_model_path, student
    )


@pytest.mark.slow  # ~20 s: a CNN teacher and a ViT student trained
def test_vit_learns_a_cnn_teachers_predictions_without_labels(vit_from_cnn) -> None:
    (kl_before, agree_before), (kl_after, agree_after) = (
        vit_from_cnn["before"],
        vit_from_cnn["after"],
    )
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)
    assert agree_after >= 0.8 > agree_before + 0.3, (agree_before, agree_after)


@pytest.mark.slow  # ~20 s: two tiny BERTs trained
def test_bert_student_moves_toward_a_wider_bert_through_logits_and_hidden_states(
    bert_from_bert,
) -> None:
    (kl_before, agree_before), (kl_after, agree_after) = (
        bert_from_bert["before"],
        bert_from_bert["after"],
    )
    assert kl_after < 0.75 * kl_before, (kl_before, kl_after)
    assert agree_after > agree_before, (agree_before, agree_after)
    # the widths differ, so a learned linear map 32 -> 64 carries the student's hidden states
    (callback,) = [
        c for c in bert_from_bert["objects"]["callbacks"] if isinstance(c, KnowledgeDistillation)
    ]
    projection = callback.projections["0"]
    assert isinstance(projection, nn.Linear) and tuple(projection.weight.shape) == (64, 32)
    # and the hidden-state term fell as it trained
    with open(bert_from_bert["out"] / "csv" / "metrics.csv") as f:
        feat = [float(r["train/kd_feat"]) for r in csv.DictReader(f) if r.get("train/kd_feat")]
    assert len(feat) == 4 and feat[-1] < feat[0], feat


def test_vit_pruned_from_its_trained_self_and_distilled_from_it(tmp_path: Path) -> None:
    """experiment=digits_vit_prune_kd on a small trained ViT: heads, MLP and token width halved
    at epoch 0, the student starting from the teacher's weights, fine-tuned against it."""
    from slimlab.compression.heads import head_counts

    small = ["model.net.dim=32", "model.net.depth=2", "model.net.heads=4", "test=false"]
    teacher = trained(
        tmp_path / "teacher", [*QUIET, "experiment=digits_vit", *small, "trainer.max_epochs=8"]
    )
    teacher_ckpt = teacher["trainer"].checkpoint_callback.best_model_path
    overrides = [*QUIET, "experiment=digits_vit_prune_kd", *small, "trainer.max_epochs=1"]
    overrides += ["trainer.limit_train_batches=4", "compression.prune.report.latency=false"]
    overrides += ["compression.distill.report.latency=false"]
    overrides += [f"compression.distill.teacher_ckpt={teacher_ckpt}"]
    cfg = compose_config(tmp_path / "student", overrides)
    metrics, objects = train(cfg)
    GlobalHydra.instance().clear()
    student, dense = objects["model"].net, load_module(teacher_ckpt).net
    assert set(head_counts(student).values()) == {2}  # 4 heads -> 2, each still 8 wide
    assert student.patch_embed.out_channels == 16  # the token width went too (32 -> 16)
    assert measure.count_params(student) < measure.count_params(dense) / 3
    assert float(metrics["train/kd"]) > 0
    # it started as the trained teacher: after 4 fine-tuning batches it is far above chance
    # (0.61 measured; a ViT trained from scratch for 4 batches is near 0.10)
    assert float(metrics["val/acc"]) > 0.3, metrics
