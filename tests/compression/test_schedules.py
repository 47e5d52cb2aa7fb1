"""The compression schedules: pure functions of (epoch, step)."""

from __future__ import annotations

import math

import pytest

from slimlab.compression.schedules import (
    QATState,
    prune_fraction,
    prune_heads_left,
    prune_last_step_epoch,
    prune_step_position,
    qat_eval_state,
    qat_train_state,
)


def test_one_step_per_epoch_runs_at_each_epoch_start() -> None:
    positions = [prune_step_position(k, 4, 10, 14, 20) for k in range(4)]
    assert positions == [(10, 0), (11, 0), (12, 0), (13, 0)]
    assert prune_last_step_epoch(4, 10, 14) == 13


def test_steps_inside_an_epoch_fall_on_batches() -> None:
    # 10 steps over epochs [2, 4) of 5 batches each: one before every batch
    positions = [prune_step_position(k, 10, 2, 4, 5) for k in range(10)]
    assert positions == [(2, 0), (2, 1), (2, 2), (2, 3), (2, 4)] + [
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
        (3, 4),
    ]
    assert prune_step_position(1, 3, 0, 2, 4) == (0, 2)  # 8 batches, 3 steps: 0, 2 (8/3), 5


@pytest.mark.parametrize("batches", [math.inf, 0, -1])
def test_unknown_epoch_length_steps_at_epoch_starts(batches: float) -> None:
    assert [prune_step_position(k, 3, 1, 4, batches) for k in range(3)] == [(1, 0), (2, 0), (3, 0)]


@pytest.mark.parametrize(("steps", "start", "end"), [(1, 5, 6), (3, 0, 3), (4, 2, 3), (7, 1, 20)])
def test_last_step_epoch_is_where_the_last_position_falls(
    steps: int, start: int, end: int
) -> None:
    for batches in (1, 3, 17, math.inf):
        epoch, _ = prune_step_position(steps - 1, steps, start, end, batches)
        assert epoch == prune_last_step_epoch(steps, start, end)


def test_pruned_fraction_grows_linearly_to_amount() -> None:
    assert [prune_fraction(k, 4, 0.5) for k in range(4)] == [0.125, 0.25, 0.375, 0.5]
    assert prune_fraction(0, 1, 0.3) == pytest.approx(0.3)


def test_qat_train_state_through_the_epochs() -> None:
    states = [
        qat_train_state(epoch, 2, freeze_bn_epoch=4, freeze_observer_epoch=5) for epoch in range(7)
    ]
    assert states[:2] == [QATState(False, False, False)] * 2  # fp32 epochs
    assert states[2:4] == [QATState(True, True, False)] * 2  # quantize and calibrate
    assert states[4] == QATState(True, True, True)  # batch-norm statistics frozen
    assert states[5:] == [QATState(True, False, True)] * 2  # int8 ranges frozen too
    never = qat_train_state(9, 0)
    assert never == QATState(fake_quant=True, observe=True, freeze_bn=False)


def test_qat_eval_state_never_moves_ranges_nor_batch_norm() -> None:
    assert qat_eval_state(1, 2, fitting=True) == QATState(False, False, None)  # fp32 epochs
    assert qat_eval_state(2, 2, fitting=True) == QATState(True, False, None)
    assert qat_eval_state(0, 2, fitting=False) == QATState(True, False, None)  # test/predict


def test_heads_left_follow_the_linear_schedule_from_the_dense_count() -> None:
    assert [prune_heads_left(k, 1, 0.5, 4) for k in range(1)] == [2]  # one shot: half
    assert [prune_heads_left(k, 2, 0.5, 4) for k in range(2)] == [3, 2]  # not 3 then 1
    assert [prune_heads_left(k, 4, 0.5, 4) for k in range(4)] == [3, 3, 2, 2]
    assert prune_heads_left(2, 3, 0.4, 5) == 3  # 0.4 * 3/3 * 5 is 2.0000000000000004: 2 go
    assert prune_heads_left(0, 1, 0.9, 4) == 1  # one head always stays
