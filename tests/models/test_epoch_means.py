"""EpochMeans, and the metrics ImageClassifier logs with it: true sample means over the epoch."""

from __future__ import annotations

import pytest
import torch

from slimlab.models.epoch_means import EpochMeans


def test_means_are_weighted_by_samples_and_each_name_by_its_own_count() -> None:
    means = EpochMeans()
    means.update(64, loss=torch.tensor(1.0), acc=torch.tensor(0.5))
    means.update(16, loss=torch.tensor(2.0), acc=torch.tensor(1.0), kd=torch.tensor(4.0))
    values = means.compute()
    assert float(values["loss"]) == pytest.approx((64 * 1.0 + 16 * 2.0) / 80)
    assert float(values["acc"]) == pytest.approx((32 + 16) / 80)
    assert float(values["kd"]) == pytest.approx(4.0)  # only the batch that had it
    means.reset()
    assert means.compute() == {}


def test_reduce_combines_sums_and_counts_of_every_process() -> None:
    # two processes: this one saw 10 samples at loss 1, the other 30 samples at loss 3
    other = torch.tensor([30 * 3.0, 30.0])
    means = EpochMeans()
    means.update(10, loss=torch.tensor(1.0, requires_grad=True))
    values = means.compute(reduce=lambda t: t + other)
    assert float(values["loss"]) == pytest.approx((10 + 90) / 40)


def test_logged_val_metrics_are_the_last_epochs_true_means(compose_cfg) -> None:
    from slimlab.train import train

    cfg = compose_cfg(["trainer.max_epochs=2", "test=false", "callbacks=none", "logger=none"])
    metrics, objects = train(cfg)
    model, datamodule = objects["model"].eval(), objects["datamodule"]
    losses, correct, seen = [], 0, 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():
            logits = model(x)
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    assert float(metrics["val/acc"]) == pytest.approx(correct / seen)
    assert float(metrics["val/loss"]) == pytest.approx(float(sum(losses)) / seen, rel=1e-5)
    assert float(metrics["val/acc_best"]) >= float(metrics["val/acc"])
    assert {"train/loss", "train/task_loss", "train/acc"} <= set(metrics)
