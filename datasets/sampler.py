"""Sampling that makes runs reproducible and resumable: data order and augmentation from (seed, epoch, index).

The sampler yields ``(index, sample_seed)`` pairs; the dataset draws all of a sample's randomness from
``sample_seed``. So the augmentation of a sample depends only on the run seed, the epoch and the index, not
on which worker process loads it, how many workers there are, or whether the run was interrupted and
resumed (albumentations ignores the global seeds, so it is seeded from this too). :func:`seeded_loader` puts
the sampler in a DataLoader whose own generator is seeded as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 31-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0] & 0x7FFFFFFF)


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``; the order is a permutation fixed by (seed, epoch).

    With ``num_replicas > 1`` (DistributedDataParallel) each rank takes every ``num_replicas``-th item of the
    same permutation, padded by wrapping around so that all ranks run the same number of steps
    (``pad=False`` for evaluation: no sample twice, ranks may get one sample fewer).
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, num_replicas: int = 1,
                 pad: bool = True):
        if num_samples <= 0:
            raise ValueError("the dataset is empty: nothing to sample (check the annotation file and split)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas})")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0
        self.pad = pad
        self.per_replica = math.ceil(num_samples / num_replicas) if pad else len(range(rank, num_samples,
                                                                                         num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_replica

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.per_replica * self.num_replicas if self.pad else len(order)
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        for index in order[self.rank:total:self.num_replicas]:
            yield int(index), sample_seed(self.seed, self.epoch, int(index))


def seeded_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, collate_fn: Callable,
                  rank: int = 0, world_size: int = 1, pin_memory: bool = False, pad: bool = True) -> DataLoader:
    """A DataLoader over a :class:`SeededSampler` (this rank's share; ``pad=False`` for evaluation)."""
    sampler = SeededSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, num_replicas=world_size, pad=pad)
    # The loader's own generator: creating an iterator would otherwise draw from the global torch RNG (which
    # dropout uses), once per epoch, or once per run with persistent workers, and a resume would shift it.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=generator,
                      collate_fn=collate_fn, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      drop_last=False)
