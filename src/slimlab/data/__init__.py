"""LightningDataModules and tensor-side transforms."""

from slimlab.data.ag_news import AGNewsDataModule
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
from slimlab.data.sst2 import SST2DataModule
from slimlab.data.synthetic_text import SyntheticTextDataModule
from slimlab.data.text import TextDataModule, WordVocabulary

__all__ = [
    "AGNewsDataModule",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "Compose",
    "DigitsDataModule",
    "MNISTDataModule",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomShift",
    "SST2DataModule",
    "SyntheticTextDataModule",
    "TextDataModule",
    "WordVocabulary",
]
