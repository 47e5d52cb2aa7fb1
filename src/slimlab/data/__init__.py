"""LightningDataModules and tensor-side transforms."""

from slimlab.data.augment import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomShift,
)
from slimlab.data.base import ClassificationDataModule
from slimlab.data.cifar10 import CIFAR10DataModule
from slimlab.data.digits import DigitsDataModule
from slimlab.data.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "Compose",
    "DigitsDataModule",
    "MNISTDataModule",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomShift",
]
