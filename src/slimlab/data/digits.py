"""scikit-learn's bundled 8x8 handwritten digits: SlimLab's default, offline dataset."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from slimlab.data.base import ClassificationDataModule
from slimlab.utils.errors import require


class DigitsDataModule(ClassificationDataModule):
    """1797 grey 8x8 digits (10 classes), split stratified into train/val/test with `seed`.

    Pixels (0..16) are standardised with the training split's mean and std (`preprocessing`).
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, test_fraction: float = 0.15, val_fraction: float = 0.15, **kwargs) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        require(
            0.0 < float(test_fraction) < 1.0 and float(test_fraction) + val_fraction < 1.0,
            f"data.test_fraction={test_fraction} is out of range: give a fraction in (0, 1) "
            f"that leaves training data beside data.val_fraction={val_fraction}",
        )
        self.test_fraction = float(test_fraction)
        self.pixel_mean: float | None = None  # of the training split, set by build_datasets
        self.pixel_std: float | None = None

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(digits.target, dtype=torch.long)
        index = torch.arange(len(y)).numpy()
        rest, test = train_test_split(
            index, test_size=self.test_fraction, stratify=y.numpy(), random_state=self.seed
        )
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=y[rest].numpy(), random_state=self.seed
        )
        mean, std = x[train].mean(), x[train].std()
        self.pixel_mean, self.pixel_std = float(mean), float(std)
        x = (x - mean) / std
        return tuple(TensorDataset(x[i], y[i]) for i in (train, val, test))  # type: ignore[return-value]

    def preprocessing(self) -> dict[str, Any]:
        """Raw pixels (0..16) standardised with the training split's mean and std."""
        if self.pixel_mean is None:
            self.setup()
        return {
            "dtype": "float32",
            "scale": 1.0,
            "mean": [self.pixel_mean],
            "std": [self.pixel_std],
        }
