"""data.mix: CutMix / mixup of training batches with soft labels, in a run and under KD."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra.errors import InstantiationException

from conftest import DIGITS_TINY, QUIET, compose_config
from slimlab.compression.distillation import KnowledgeDistillation
from slimlab.data import DigitsDataModule
from slimlab.data.synthetic_text import SyntheticTextDataModule
from slimlab.train import train
from slimlab.utils.errors import ConfigError, find_config_error


def test_only_training_batches_are_mixed_and_carry_soft_labels() -> None:
    dm = DigitsDataModule(mix="cutmix")
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    for training in (False, True):
        dm.trainer = SimpleNamespace(training=training, world_size=1)
        torch.manual_seed(0)
        out_x, out_y = dm.on_after_batch_transfer((x.clone(), y.clone()), 0)
        if not training:  # validation / test / export batches: as they were
            assert torch.equal(out_x, x) and torch.equal(out_y, y)
            continue
        assert out_y.shape == (len(y), 10) and out_y.is_floating_point()
        torch.testing.assert_close(out_y.sum(1), torch.ones(len(y)))
        assert not torch.equal(out_x, x)
        assert bool((out_y.argmax(1) == y).float().mean() > 0.4)  # most keep most of their own


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.mix=blend", r"data\.mix='blend' is not a mix: give null \(no mixing\) or one of"),
        ("data.mix_beta=0", r"data\.mix_beta=0 is out of range"),
    ],
)
def test_bad_mix_settings_stop_the_run_naming_the_key(tmp_path, override, message) -> None:
    with pytest.raises(InstantiationException) as info:  # train.py prints the ConfigError
        train(compose_config(tmp_path, [*QUIET, override]))
    assert re.search(message, str(find_config_error(info.value)))


def test_text_data_refuses_mixing() -> None:
    with pytest.raises(ConfigError, match=r"data.mix=cutmix mixes images; token ids cannot"):
        SyntheticTextDataModule(mix="cutmix")


def test_a_run_trains_on_cutmix_batches_and_the_teacher_labels_them(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # soft labels reach the cross-entropy: the CNN still learns digits from mixed batches
    cfg = compose_config(tmp_path / "teacher", [*DIGITS_TINY, "data.mix=cutmix", "test=true"])
    metrics, objects = train(cfg)
    assert float(metrics["test/acc"]) > 0.8
    assert 0.3 < float(metrics["train/acc"]) <= 1.0
    teacher = objects["trainer"].checkpoint_callback.best_model_path
    # under KD the student and the teacher both run on the mixed images of each batch
    mixed: list[torch.Tensor] = []
    transfer = DigitsDataModule.on_after_batch_transfer

    def keep_mixed(self: DigitsDataModule, batch: Any, dataloader_idx: int) -> Any:
        out = transfer(self, batch, dataloader_idx)
        if self.trainer is not None and self.trainer.training and isinstance(out, tuple):
            mixed.append(out[0])  # a training batch (not the example input)
        return out

    taught: list[torch.Tensor] = []
    run_teacher = KnowledgeDistillation._run_teacher

    def keep_taught(self: KnowledgeDistillation) -> torch.Tensor:
        if self._teacher_logits is None:
            taught.append(self._inputs[0][0])
        return run_teacher(self)

    monkeypatch.setattr(DigitsDataModule, "on_after_batch_transfer", keep_mixed)
    monkeypatch.setattr(KnowledgeDistillation, "_run_teacher", keep_taught)
    student = [
        *QUIET,
        "model.net.widths=[4,8]",
        "data.mix=cutmix",
        "compression=distill",
        f"compression.distill.teacher_ckpt={teacher}",
        "compression.distill.report.latency=false",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "test=false",
    ]
    metrics, _ = train(compose_config(tmp_path / "student", student))
    assert float(metrics["train/kd"]) > 0 and float(metrics["train/task_loss"]) > 0
    assert len(mixed) == len(taught) == 3
    assert all(torch.equal(a, b) for a, b in zip(mixed, taught, strict=True))
