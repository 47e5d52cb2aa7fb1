"""Knowledge distillation: the KD loss, a frozen teacher, clean student checkpoints, feature
KD with a learned projection, resume, DDP, the two-command flow, and bad input."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException

from conftest import QUIET, compose_config, run_cli, run_folders
from slimlab.compression.distillation import PROJECTIONS, KnowledgeDistillation, kd_loss
from slimlab.eval import evaluate
from slimlab.models.base import count_parameters, load_module
from slimlab.train import train
from slimlab.utils.errors import ConfigError, find_config_error
from slimlab.utils.instantiate import instantiate_callbacks

LIMITS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]
TEACHER_NET = "{_target_:slimlab.models.nets.SmallCNN,widths:[16,16,32]}"
STUDENT = ["model.net.widths=[4,8,8]"]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small trained CNN teacher checkpoint (widths 16/16/32) written by train.py."""
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = compose_config(tmp, [*QUIET, *LIMITS, "model.net.widths=[16,16,32]", "test=false"])
    _, objects = train(cfg)
    return objects["trainer"].checkpoint_callback.best_model_path


def distill(teacher_ckpt: str, *overrides: str) -> list[str]:
    return [
        *QUIET,
        *LIMITS,
        *STUDENT,
        "compression=distill",
        f"compression.distill.teacher_ckpt={teacher_ckpt}",
        *overrides,
    ]


def distill_callback(objects: dict) -> KnowledgeDistillation:
    (callback,) = [c for c in objects["callbacks"] if isinstance(c, KnowledgeDistillation)]
    return callback


def test_kd_loss_is_hintons_soft_target_kl() -> None:
    torch.manual_seed(0)
    student, teacher, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10), 3.0
    expected = F.kl_div(
        F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean"
    )
    torch.testing.assert_close(kd_loss(student, teacher, t), t**2 * expected)
    assert float(kd_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)
    # a gradient step on the student's logits moves it towards the teacher
    kd_loss(student, teacher, t).backward()
    with torch.no_grad():
        assert kd_loss(student - 0.5 * student.grad, teacher, t) < kd_loss(student, teacher, t)


def test_student_learns_from_a_frozen_teacher_and_its_checkpoint_is_clean(
    compose_cfg, tmp_path: Path, teacher_ckpt: str
) -> None:
    teacher_before = load_module(teacher_ckpt).net.state_dict()
    cfg = compose_cfg(
        distill(teacher_ckpt, "compression.distill.alpha=0.7", "compression.distill.temperature=2")
    )
    metrics, objects = train(cfg)
    model, callback = objects["model"], distill_callback(objects)

    # the KD term is in the loss: loss = (1 - alpha) * task + kd, logged separately
    kd, task = float(metrics["train/kd"]), float(metrics["train/task_loss"])
    assert kd > 0
    assert float(metrics["train/loss"]) == pytest.approx(0.3 * task + kd, rel=1e-4)
    # the teacher stayed frozen, in eval mode, and outside the student
    teacher = callback.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[name], msg=name)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert model.task_loss_weight == 1.0 and not model.loss_terms  # undone after fit

    # the student's checkpoint holds the student and nothing else, and evals identically
    best = objects["trainer"].checkpoint_callback.best_model_path
    saved = torch.load(best, weights_only=True)
    assert set(saved["state_dict"]) == {f"net.{k}" for k in model.net.state_dict()}
    assert "teacher" not in json.dumps(saved["hyper_parameters"])
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["params"] == count_parameters(model.net)
    report = summary["compression"]["distillation"]
    assert report["teacher_params"] == count_parameters(callback.teacher)
    assert report["teacher_params"] > 5 * report["student_params"]
    assert report["vs_teacher"]["params_ratio"] < 0.2 and report["vs_teacher"]["speedup_b64"] > 0
    assert 0.0 <= report["teacher_test_acc"] <= 1.0
    eval_cfg = compose_config(
        tmp_path / "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=2"], "eval"
    )
    eval_metrics, _ = evaluate(eval_cfg)
    for key in ("test/acc", "test/loss"):
        assert float(eval_metrics[key]) == pytest.approx(float(metrics[key]), abs=1e-5), key


def test_hard_distillation_uses_the_teachers_top_class_as_a_label(
    compose_cfg, teacher_ckpt: str
) -> None:
    # the term itself: alpha * cross-entropy with the teacher's argmax, whatever T is
    callback = KnowledgeDistillation(alpha=0.4, temperature=7.0, hard=True)
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    callback._teacher_logits = teacher
    expected = 0.4 * F.cross_entropy(student, teacher.argmax(dim=1))
    torch.testing.assert_close(callback._kd_term(None, student), expected)
    # ... and in a run: the loss is (1 - alpha) * task + that term, reported as hard
    cfg = compose_cfg(
        distill(teacher_ckpt, "compression.distill.alpha=0.6", "compression.distill.hard=true")
    )
    metrics, _ = train(cfg)
    kd, task = float(metrics["train/kd"]), float(metrics["train/task_loss"])
    assert kd > 0
    assert float(metrics["train/loss"]) == pytest.approx(0.4 * task + kd, rel=1e-4)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["compression"]["distillation"]["hard"] is True


def test_teacher_from_a_net_config_and_weights_file(
    compose_cfg, tmp_path: Path, teacher_ckpt: str
) -> None:
    reference = load_module(teacher_ckpt).net.eval()
    weights = tmp_path / "teacher_weights.pt"
    torch.save(reference.state_dict(), weights)
    cfg = compose_cfg(
        [
            *STUDENT,
            "debug=fdr",
            "compression=distill",
            f"compression.distill.teacher_net={TEACHER_NET}",
            f"compression.distill.teacher_weights={weights}",
        ]
    )
    metrics, objects = train(cfg)
    assert float(metrics["train/kd"]) > 0
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(distill_callback(objects).teacher(x), reference(x))


def test_feature_distillation_trains_a_projection_between_mismatched_widths(
    compose_cfg, monkeypatch, teacher_ckpt: str
) -> None:
    initial: dict[str, torch.Tensor] = {}

    def record(self, trainer, pl_module) -> None:
        initial.update({k: v.clone() for k, v in self.projections.state_dict().items()})

    monkeypatch.setattr(KnowledgeDistillation, "on_train_start", record, raising=False)
    # student features.2 / features.4 have 8 channels, the teacher's 16 / 32
    pairs = "[[features.2,features.2],[features.4,features.4]]"
    cfg = compose_cfg(distill(teacher_ckpt, f"compression.distill.feature_pairs={pairs}"))
    metrics, objects = train(cfg)
    callback, model = distill_callback(objects), objects["model"]

    assert float(metrics["train/kd_feat"]) > 0 and float(metrics["train/kd"]) > 0
    projections = callback.projections
    assert [tuple(p.weight.shape) for p in projections.values()] == [(16, 8, 1, 1), (32, 8, 1, 1)]
    for name, value in projections.state_dict().items():  # trained with the student
        assert not torch.equal(value, initial[name]), name
    assert not hasattr(model, PROJECTIONS)  # detached after fit

    # the student checkpoint does not hold them; the callback state does (for resume)
    best = objects["trainer"].checkpoint_callback.best_model_path
    saved = torch.load(best, weights_only=True)
    assert not any(PROJECTIONS in k for k in saved["state_dict"])
    (state,) = [v for k, v in saved["callbacks"].items() if k == "KnowledgeDistillation"]
    assert set(state["projections"]) == {"0.weight", "1.weight"}
    # and the projections' parameters were in the optimizer (the student's + 2 projections)
    n_params = len(saved["optimizer_states"][0]["param_groups"][0]["params"])
    assert n_params == len(list(model.net.parameters())) + 2
    assert load_module(best).net.state_dict().keys() == model.net.state_dict().keys()


@pytest.mark.slow
def test_resume_with_feature_distillation_continues_exactly(
    tmp_path: Path, teacher_ckpt: str
) -> None:
    common = distill(
        teacher_ckpt,
        "compression.distill.feature_pairs=[[features.4,features.4]]",
        "callbacks.early_stopping=null",
        "test=false",
        "model.scheduler.T_max=2",
    )

    def run(name: str, *overrides: str) -> dict:
        cfg = compose_config(tmp_path / name, [*common, *overrides])
        train(cfg)
        return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")

    straight = run("straight", "trainer.max_epochs=2")
    run("first", "trainer.max_epochs=1")
    first_last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = run("resumed", "trainer.max_epochs=2", f"ckpt_path={first_last}")
    assert resumed["global_step"] == straight["global_step"]
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)
    key = "KnowledgeDistillation"
    for name, value in straight["callbacks"][key]["projections"].items():
        torch.testing.assert_close(resumed["callbacks"][key]["projections"][name], value)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"alpha": 1.5}, "compression.distill.alpha=1.5"),
        ({"alpha": -0.1}, "compression.distill.alpha=-0.1"),
        ({"temperature": 0}, "compression.distill.temperature=0"),
        ({"temperature": -2.0}, "compression.distill.temperature=-2.0"),
        ({"feature_weight": -1.0}, "compression.distill.feature_weight=-1.0"),
        ({"teacher_ckpt": "missing/teacher.ckpt"}, "compression.distill.teacher_ckpt="),
        ({"teacher_ckpt": "latest", "teacher_net": {"_target_": "x"}}, "both set"),
        ({"teacher_weights": "w.pt"}, "compression.distill.teacher_weights=w.pt"),
        ({"feature_pairs": [["features.2"]]}, "compression.distill.feature_pairs"),
        ({"hard": "yes"}, "compression.distill.hard='yes' is not a boolean"),
    ],
)
def test_bad_settings_fail_when_the_callback_is_built(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("-", r"\-")):
        KnowledgeDistillation(**kwargs)


def test_bad_setting_from_the_command_line_names_the_key(compose_cfg) -> None:
    cfg = compose_cfg(["compression=distill", "compression.distill.alpha=2"])
    with pytest.raises(InstantiationException) as info:
        instantiate_callbacks(cfg.compression)
    assert "compression.distill.alpha=2" in str(find_config_error(info.value))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "has no teacher"),
        (
            [
                "compression.distill.teacher_net={_target_:slimlab.models.nets.MLP,"
                "input_shape:[1,8,8],num_classes:5}"
            ],
            "same classes",
        ),
        (
            [
                "compression.distill.teacher_ckpt=TEACHER",
                "compression.distill.feature_pairs=[[features.9,features.2]]",
            ],
            "student layer 'features.9'",
        ),
        (
            [
                "compression.distill.teacher_ckpt=TEACHER",
                "compression.distill.feature_pairs=[[features.2,head]]",
            ],
            "teacher layer 'head'",
        ),
        (
            ["compression.distill.teacher_ckpt=latest", "compression.distill.teacher_name=nope"],
            "found no last.ckpt",
        ),
        (["compression.distill.teacher_ckpt=NOT_A_CKPT"], "could not be loaded"),
    ],
)
def test_bad_teacher_fails_before_training(
    compose_cfg, tmp_path: Path, teacher_ckpt: str, overrides: list[str], message: str
) -> None:
    not_a_ckpt = tmp_path / "notes.txt"
    not_a_ckpt.write_text("not a checkpoint")
    overrides = [
        o.replace("TEACHER", teacher_ckpt).replace("NOT_A_CKPT", str(not_a_ckpt))
        for o in overrides
    ]
    cfg = compose_cfg([*QUIET, *LIMITS, *STUDENT, "compression=distill", *overrides])
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # nothing trained


@pytest.mark.slow
def test_distillation_under_ddp_sim(tmp_path: Path, teacher_ckpt: str) -> None:
    run_cli(
        "train.py",
        [
            *distill(teacher_ckpt, "trainer=ddp_sim"),
            "logger=csv",
            "compression.distill.feature_pairs=[[features.4,features.4]]",
        ],
        tmp_path,
    )
    (folder,) = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["compression"]["distillation"]["teacher"] == teacher_ckpt
    assert 0.0 <= summary["test"]["acc"] <= 1.0
    rows = list(csv.DictReader((folder / "csv" / "metrics.csv").open()))
    assert any(float(r["train/kd"] or 0) > 0 and float(r["train/kd_feat"] or 0) > 0 for r in rows)
    saved = torch.load(summary["best_checkpoint"], weights_only=True)
    assert all(k.startswith("net.") for k in saved["state_dict"])
    assert load_module(summary["best_checkpoint"]).net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_two_command_flow_teacher_then_digits_distill(tmp_path: Path) -> None:
    fast = [*QUIET, *LIMITS]
    run_cli("train.py", ["experiment=digits_cnn", *fast], tmp_path)
    run_cli("train.py", ["experiment=digits_distill", *fast], tmp_path)
    (teacher,) = (tmp_path / "logs" / "train" / "digits_cnn").glob("runs/*/checkpoints/last.ckpt")
    (student,) = (tmp_path / "logs" / "train" / "digits_distill").glob("runs/*/metrics.json")
    report = json.loads(student.read_text())["compression"]["distillation"]
    assert Path(report["teacher"]) == teacher.resolve()
    assert report["student_params"] < report["teacher_params"] / 20


def write_run(log_dir: Path, name: str, epoch: int, max_epochs: int, finished: bool, t: int):
    """A teacher run folder holding only what `teacher_ckpt: latest` reads."""
    run = log_dir / "train" / "digits_cnn" / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "last.ckpt"
    run_config = {"trainer": {"max_epochs": max_epochs}}
    torch.save({"epoch": epoch, "slimlab": {"run_config": run_config}}, path)
    if finished:
        (run / "metrics.json").write_text("{}")
    os.utime(path, (t, t))
    return path


def test_teacher_latest_prefers_the_newest_finished_run(tmp_path: Path, caplog) -> None:
    finished = write_run(tmp_path, "a", epoch=19, max_epochs=20, finished=True, t=1000)
    write_run(tmp_path, "b", epoch=15, max_epochs=20, finished=False, t=2000)  # killed
    callback = KnowledgeDistillation(
        teacher_ckpt="latest", teacher_name="digits_cnn", log_dir=str(tmp_path)
    )
    with caplog.at_level(logging.WARNING):
        assert callback._resolve_ckpt() == str(finished.resolve())
    assert "skips 1 newer run(s) of digits_cnn that did not finish" in caplog.text
    assert "epoch 16 of 20" in caplog.text
    # with no finished run the newest is the teacher, said loudly when it is built
    (finished.parent.parent / "metrics.json").unlink()
    os.utime(finished, (3000, 3000))
    assert callback._resolve_ckpt() == str(finished.resolve())  # epoch 20 of 20: complete


def test_an_unfinished_teacher_is_named_with_its_epochs(
    tmp_path: Path, teacher_ckpt: str, caplog
) -> None:
    saved = torch.load(teacher_ckpt, weights_only=True)
    saved["slimlab"]["run_config"]["trainer"]["max_epochs"] = 20  # as if killed after epoch 1
    path = tmp_path / "train" / "digits_cnn" / "runs" / "killed" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    callback = KnowledgeDistillation(
        teacher_ckpt="latest", teacher_name="digits_cnn", log_dir=str(tmp_path)
    )
    with caplog.at_level(logging.INFO):
        callback.build_teacher()
    assert f"Teacher: {path.resolve()} (epoch 1 of 20) is from a run that did not finish" in (
        caplog.text
    )
    assert "and no run of digits_cnn finished" in caplog.text
