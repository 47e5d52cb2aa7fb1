"""Seeded train / validation splits of in-memory datasets."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle range(n) with `seed`; return (train, val) indices, `val_fraction` of them val."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return order[n_val:], order[:n_val]


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """Shuffle with `seed` and hold out `val_fraction` of (x, y) for validation."""
    train, val = split_indices(len(y), val_fraction, seed)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])
