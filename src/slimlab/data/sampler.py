"""A shuffling sampler whose order depends only on (seed, epoch), so a resume replays it."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Random permutation per epoch, drawn from its own generator seeded with (seed, epoch).

    Lightning calls `set_epoch` before every training epoch (as for DistributedSampler),
    so epoch k shuffles the same way in an uninterrupted run and in one resumed at k,
    and the global torch RNG is left alone.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch`."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()

    def __len__(self) -> int:
        return len(self.data_source)
