"""Drift of live traffic against the training split's reference, over a rolling window.

The reference is what export.py records (`Predictor.reference`): the class prior of the
training labels and the raw inputs' mean/std per channel (images) or per feature. The monitor
keeps the last `window` samples a service answered, one row each (predicted class, and the
sample's per-channel mean and mean of squares), in ring buffers. After each batch:

- `prediction_psi`: the population stability index of the predicted-class mix against the
  class prior, sum_i (p_i - q_i) * ln(p_i / q_i), both floored at 1e-4. 0 is no change; by the
  usual reading < 0.1 is stable, 0.1-0.2 a moderate shift, > 0.2 a large one. With n samples
  and k classes an unchanged mix still reads about (k - 1) / n (sampling noise);
- `input_shift`: for each channel, the live mean's distance from the reference mean in
  reference standard deviations, and |ln(live std / reference std)|; the largest of these over
  channels. 0: the live inputs have the training mean and spread; 1: the mean moved by one
  standard deviation, or the spread changed by a factor e.

Plain numpy, no drift library: a few array operations per batch on a window of ~1000 rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FLOOR = 1e-4  # proportions below this count as this (PSI of an empty class stays finite)


def psi(live: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of proportions `live` against `reference` (same length)."""
    p = np.clip(np.asarray(live, dtype=np.float64), FLOOR, None)
    q = np.clip(np.asarray(reference, dtype=np.float64), FLOOR, None)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def sample_moments(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample and channel (images, axis 1) or feature: the mean and the mean of squares."""
    x = np.asarray(raw, dtype=np.float64)
    flat = x.reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 3 else x.reshape(x.shape[0], -1, 1)
    return flat.mean(axis=2), (flat**2).mean(axis=2)


class DriftMonitor:
    """Rolling window of live predictions and inputs, compared with a drift reference."""

    def __init__(self, reference: Mapping[str, Any], num_classes: int, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window={window}: give at least 1 sample")
        self.window = int(window)
        prior = reference.get("class_prior")
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        if self.prior is not None and self.prior.size != num_classes:
            raise ValueError(
                f"the reference's class prior has {self.prior.size} classes, the model "
                f"{num_classes}"
            )
        self.num_classes = int(num_classes)
        mean, std = reference.get("input_mean"), reference.get("input_std")
        self.ref_mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.ref_std = None if std is None else np.asarray(std, dtype=np.float64)
        channels = 0 if self.ref_mean is None else self.ref_mean.size
        self._classes = np.zeros(self.window, dtype=np.int64)
        self._means = np.zeros((self.window, channels))
        self._squares = np.zeros((self.window, channels))
        self._next = 0
        self.count = 0  # samples in the window, <= window

    def update(self, predicted: np.ndarray, raw: np.ndarray | None = None) -> None:
        """Add a batch: predicted classes (N,) and, for tensor inputs, the raw batch (N, ...)."""
        predicted = np.asarray(predicted)[-self.window :]
        n = predicted.shape[0]
        rows = (self._next + np.arange(n)) % self.window
        self._classes[rows] = predicted
        if self.ref_mean is not None and raw is not None:
            means, squares = sample_moments(np.asarray(raw)[-self.window :])
            if means.shape[1] == self.ref_mean.size:
                self._means[rows], self._squares[rows] = means, squares
        self._next = (self._next + n) % self.window
        self.count = min(self.count + n, self.window)

    def prediction_psi(self) -> float | None:
        """PSI of the window's predicted-class mix against the class prior (None: no data)."""
        if self.prior is None or self.count == 0:
            return None
        counts = np.bincount(self._classes[: self.count], minlength=self.num_classes)
        return psi(counts / self.count, self.prior)

    def input_shift(self) -> float | None:
        """Largest per-channel shift of the window's inputs from the reference (None: no data)."""
        if self.ref_mean is None or self.ref_std is None or self.count == 0:
            return None
        mean = self._means[: self.count].mean(axis=0)
        var = np.clip(self._squares[: self.count].mean(axis=0) - mean**2, 0.0, None)
        ref_std = np.clip(self.ref_std, 1e-12, None)
        mean_shift = np.abs(mean - self.ref_mean) / ref_std
        spread_shift = np.abs(np.log(np.clip(np.sqrt(var), 1e-12, None) / ref_std))
        return float(max(mean_shift.max(), spread_shift.max()))
