"""The shared base of SlimLab's image-classification DataModules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from slimlab.data.augment import MIXES, Normalize, mix_batch
from slimlab.data.sampler import EpochShuffleSampler
from slimlab.utils.errors import require


class ClassificationDataModule(L.LightningDataModule):
    """Splits, loaders and on-device transforms; subclasses only build the three datasets.

    `batch_size` is the global batch: under DDP each rank loads `batch_size / world_size`.
    `normalize` runs on every batch after it reaches the device, `augment` on training
    batches only (both are tensor transforms from `slimlab.data.augment`). `mix` (`cutmix` or
    `mixup`, `lam ~ Beta(mix_beta, mix_beta)`) then mixes each training batch's images in pairs
    and their labels with them, so training batches carry soft labels (N, num_classes)
    (`slimlab.data.augment.mix_batch`); validation and test batches are never mixed.
    """

    num_classes: int = 0
    input_shape: tuple[int, ...] = ()

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 42,
        normalize: nn.Module | None = None,
        augment: nn.Module | None = None,
        mix: str | None = None,
        mix_beta: float = 1.0,
    ) -> None:
        super().__init__()
        require(
            isinstance(batch_size, int) and batch_size > 0,
            f"data.batch_size={batch_size} is out of range: give a positive integer",
        )
        require(
            0.0 < float(val_fraction) < 1.0,
            f"data.val_fraction={val_fraction} is out of range: give a fraction in (0, 1)",
        )
        require(
            isinstance(num_workers, int) and num_workers >= 0,
            f"data.num_workers={num_workers} is out of range: give 0 or a positive integer",
        )
        require(
            mix is None or mix in MIXES,
            f"data.mix={mix!r} is not a mix: give null (no mixing) or one of {list(MIXES)}",
        )
        require(
            isinstance(mix_beta, int | float) and not isinstance(mix_beta, bool) and mix_beta > 0,
            f"data.mix_beta={mix_beta} is out of range: give a Beta parameter > 0 (1: the mixed "
            "share is uniform in [0, 1])",
        )
        self.batch_size = batch_size
        self.val_fraction = float(val_fraction)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.normalize = normalize
        self.augment = augment
        self.mix = mix
        self.mix_beta = float(mix_beta)
        self.batch_size_per_device = batch_size
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return (train, val, test) datasets of (image tensor, label) pairs."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        require(
            self.batch_size % world_size == 0,
            f"data.batch_size={self.batch_size} does not divide by the world size {world_size}: "
            f"give a global batch size that is a multiple of {world_size}",
        )
        self.batch_size_per_device = self.batch_size // world_size
        if self.data_train is None:
            self.data_train, self.data_val, self.data_test = self.build_datasets()

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        assert dataset is not None, "call setup() first"
        world_size = self.trainer.world_size if self.trainer is not None else 1
        # Single process: a (seed, epoch)-keyed shuffle; under DDP Lightning swaps in a
        # DistributedSampler, which is keyed the same way. The loader's own generator keeps
        # worker seeding off the global RNG, so a resume replays dropout/augmentation exactly.
        sampler = EpochShuffleSampler(dataset, self.seed) if train and world_size == 1 else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, train=False)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, list | tuple) or len(batch) != 2:
            return batch  # e.g. the model's example_input_array, already in model space
        x, y = batch
        if self.normalize is not None:
            x = self.normalize(x)
        if self.trainer is not None and self.trainer.training:
            if self.augment is not None:
                x = self.augment(x)
            if self.mix is not None:
                x, y = mix_batch(x, y, self.mix, self.num_classes, self.mix_beta)
        return x, y

    def preprocessing(self) -> dict[str, Any]:
        """How a raw input becomes the network's input, as plain data for an export.

        ``model_input = (raw * scale - mean[c]) / std[c]`` per channel c; ``dtype`` is the
        raw input's dtype (uint8 images arrive as 0..255). Call after `setup` where the
        statistics come from the data (digits).
        """
        raw_dtype = "float32"
        if isinstance(self.normalize, Normalize):
            mean, std = (
                self.normalize.mean.flatten().tolist(),
                self.normalize.std.flatten().tolist(),
            )
        elif self.normalize is None:
            mean, std = [0.0], [1.0]
        else:
            raise NotImplementedError(
                f"{type(self.normalize).__name__} is not a slimlab.data.augment.Normalize: "
                "override preprocessing() to describe it"
            )
        return {"dtype": raw_dtype, "scale": 1.0, "mean": mean, "std": std}


class DownloadedDataModule(ClassificationDataModule):
    """Base of the datasets kept as uint8 files in `data_dir` (fetched when `download` is on).

    With `normalize=None` the uint8 batches are only scaled to [0, 1] floats.
    """

    def __init__(self, data_dir: str, download: bool = True, **kwargs: Any) -> None:
        if kwargs.get("normalize") is None:
            kwargs["normalize"] = Normalize(mean=[0.0], std=[1.0])  # uint8 -> float in [0, 1]
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def preprocessing(self) -> dict[str, Any]:
        """Raw uint8 pixels (0..255): scaled to [0, 1], then normalised per channel."""
        return {**super().preprocessing(), "dtype": "uint8", "scale": 1.0 / 255.0}
