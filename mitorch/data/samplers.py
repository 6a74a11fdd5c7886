"""A sampler whose order is a function of (seed, epoch, rank), so runs can resume mid-epoch,
and the per-sample seeds that make each image's augmentation a function of (seed, epoch, index)."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

_MASK = 2**64 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (order, augmentations): a resumed epoch repeats it."""
    return seed * 100_003 + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (a 63-bit splitmix64 mix of the three)."""
    x = (epoch_seed(seed, epoch) * 0x9E3779B97F4A7C15 + index) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) >> 1


class SampleKey(NamedTuple):
    """What the training sampler yields: an image's index and the seed of its augmentation."""

    index: int
    seed: int


def split_key(key: int | SampleKey) -> tuple[int, int | None]:
    """(index, augmentation seed or None) of a dataset key: a SampleKey or a plain index."""
    if isinstance(key, SampleKey):
        return key.index, key.seed
    return key, None


@contextlib.contextmanager
def augmentation_random(seed: int | None) -> Iterator[None]:
    """Within it, torch's CPU generator, `random` and NumPy's global generator are seeded with
    `seed`; on leaving, torch's generator is back where it was. With seed None, nothing changes.

    So an image's augmentation depends only on its seed: not on which loader worker loads it,
    nor on where an interrupted epoch resumed; and it takes nothing from the training's own
    random state (torch's: dropout, initialization) when images load in the main process.
    `random` and NumPy, which the training does not draw from, are left seeded by the last
    image loaded, so they too are a function of the seed alone: saving and restoring their
    states would cost about 0.3 ms an image, several percent of its loading time.
    """
    if seed is None:
        yield
        return
    # The default generator only: torch.manual_seed would also reseed the CUDA generators.
    saved = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.default_generator.set_state(saved)


class EpochSampler(torch.utils.data.Sampler):
    """Indices for one process of `world_size`, reshuffled every epoch.

    Training (shuffle=True): a permutation seeded by (seed, epoch), cut to a multiple of
    world_size so every process gets the same number of images; each index comes as a
    SampleKey with its augmentation seed, which depends on (seed, epoch, index) only, so a
    process of a DDP run augments an image as a single process would. Evaluation
    (shuffle=False): rank r gets images r, r + world_size, ...; every image exactly once, no
    padding; plain indices.

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

    def __iter__(self) -> Iterator[int | SampleKey]:
        indices = self._indices()[self.skip:]
        if not self.shuffle:
            return iter(indices)
        return (SampleKey(i, sample_seed(self.seed, self.epoch, i)) for i in indices)

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.size, self.world_size))
        return max(self.size // self.world_size - self.skip, 0)
