"""A sampler whose order is a function of (seed, epoch, rank), so runs can resume mid-epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (order, augmentations): a resumed epoch repeats it."""
    return seed * 100_003 + epoch


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices for one process of `world_size`, reshuffled every epoch.

    Training (shuffle=True): a permutation seeded by (seed, epoch), cut to a multiple of
    world_size so every process gets the same number of images. Evaluation (shuffle=False):
    rank r gets images r, r + world_size, ...; every image exactly once, no padding.

    Args:
        size: number of images in the dataset.
        skip: set by set_epoch, images of this process's share already seen (resume).
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        usable = self.size - self.size % self.world_size
        return order[:usable][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.size, self.world_size))
        return max(self.size // self.world_size - self.skip, 0)
