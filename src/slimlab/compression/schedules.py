"""When compression acts: pure functions of (epoch, step), like nanoGPT's `get_lr(it)`.

The callbacks call these instead of carrying the arithmetic inline, and the compression-order
check (`slimlab.compression.callback`) reads the same functions, so there is one copy of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


# -- pruning ----------------------------------------------------------------------------------
def prune_step_position(
    k: int, steps: int, start_epoch: int, end_epoch: int, batches_per_epoch: float
) -> tuple[int, int]:
    """(epoch, batch index) before which pruning step `k` (0-based) of `steps` runs.

    The steps are spread evenly over [start_epoch, end_epoch), at batch granularity when the
    number of batches per epoch is known (finite and > 0), else at the start of an epoch.
    """
    span = end_epoch - start_epoch
    if math.isinf(batches_per_epoch) or batches_per_epoch <= 0:
        return start_epoch + (k * span) // steps, 0
    batches = int(batches_per_epoch)
    position = start_epoch * batches + (k * span * batches) // steps
    return position // batches, position % batches


def prune_last_step_epoch(steps: int, start_epoch: int, end_epoch: int) -> int:
    """The epoch in which the last pruning step runs (the same for any number of batches)."""
    return start_epoch + ((steps - 1) * (end_epoch - start_epoch)) // steps


def prune_fraction(k: int, steps: int, amount: float) -> float:
    """The fraction of channels / params / MACs removed once step `k` (0-based) is done:
    growing linearly to `amount` at the last step."""
    return amount * (k + 1) / steps


def prune_heads_left(k: int, steps: int, head_amount: float, heads: int) -> int:
    """The heads an attention module that had `heads` (dense) keeps once pruning step `k`
    (0-based) of `steps` is done: `prune_fraction` of them go, rounded up as torch-pruning's
    one-shot step rounds; at least one stays."""
    removed = math.ceil(round(prune_fraction(k, steps, head_amount) * heads, 9))
    return max(1, heads - removed)


# -- quantization-aware training --------------------------------------------------------------
@dataclass(frozen=True)
class QATState:
    """Switches of a QAT network: fake quantization, observers, batch-norm statistics.

    `freeze_bn=None` leaves batch norm as it is (evaluation must not unfreeze it).
    """

    fake_quant: bool
    observe: bool
    freeze_bn: bool | None


def qat_train_state(
    epoch: int,
    start_epoch: int,
    freeze_bn_epoch: int | None = None,
    freeze_observer_epoch: int | None = None,
) -> QATState:
    """The QAT switches for training epoch `epoch`: quantize and observe from `start_epoch`,
    freeze batch-norm statistics from `freeze_bn_epoch`, the int8 ranges from
    `freeze_observer_epoch` (None: never)."""
    active = epoch >= start_epoch
    observe = active and (freeze_observer_epoch is None or epoch < freeze_observer_epoch)
    freeze_bn = freeze_bn_epoch is not None and epoch >= freeze_bn_epoch
    return QATState(fake_quant=active, observe=observe, freeze_bn=freeze_bn)


def qat_eval_state(epoch: int, start_epoch: int, fitting: bool) -> QATState:
    """The QAT switches for validation / test / predict: the ranges never move; quantization
    is on once QAT has started, and always outside `fit`."""
    return QATState(fake_quant=epoch >= start_epoch or not fitting, observe=False, freeze_bn=None)
