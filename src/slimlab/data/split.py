"""Seeded train / validation splits of in-memory datasets."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """Shuffle with `seed` and hold out `val_fraction` of (x, y) for validation."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(len(y) * val_fraction)), len(y) - 1)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])
