"""Sample-weighted epoch means of a module's scalars, kept on the device until the epoch ends.

What happens when (`ClassificationModule` keeps one per stage: train, val, test):

- every step: `update(n, loss=..., acc=...)` adds `value * n` to a running sum per name and
  `n` to that name's count. These are tensor additions on the batch's device: no `.item()`,
  no host sync, no `self.log`.
- at the epoch's end: `compute(reduce)` stacks the sums and counts into one tensor, sums it
  over processes with `reduce` (one all-reduce under DDP; identity on one process) and
  returns each name's mean over every sample the processes saw; `reset()` empties it.

Why not `self.log(..., on_epoch=True)` in every step, which gives the same means: on a CPU
each such call cost about a millisecond (Lightning's result collection moves and deep-copies
its metadata on every call, and a torchmetrics object passed to it is moved and updated
through its forward), the largest part of the template's own cost per step on small models
(docs/performance.md). Logging once per epoch keeps the metric names, values and the
moment monitoring callbacks see them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


class EpochMeans:
    """Running sample-weighted means of named scalar tensors (see the module docstring)."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def update(self, n: int, **values: torch.Tensor) -> None:
        """Add each value (the mean over a batch of `n` samples) to its running sum."""
        for name, value in values.items():
            weighted = value.detach().float() * n
            total = self._sums.get(name)
            self._sums[name] = weighted if total is None else total + weighted
            self._counts[name] = self._counts.get(name, 0) + n

    def compute(self, reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
        """Each name's mean since the last reset; `reduce` sums a tensor over processes."""
        names = sorted(self._sums)  # the same order on every process
        if not names:
            return {}
        sums = torch.stack([self._sums[name] for name in names])
        counts = torch.tensor([float(self._counts[name]) for name in names], device=sums.device)
        totals = torch.cat([sums, counts])
        if reduce is not None:
            totals = reduce(totals)
        means = totals[: len(names)] / totals[len(names) :]
        return dict(zip(names, means.unbind(), strict=True))

    def reset(self) -> None:
        """Start a new epoch."""
        self._sums.clear()
        self._counts.clear()
