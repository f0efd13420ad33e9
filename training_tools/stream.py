"""Deterministic stream of training batches, sharded over DDP ranks, prefetched in threads.

Sample number ``g`` (counted over all ranks) lies in epoch ``g // N`` (``N`` samples per epoch:
every case's ``sampler.count``), at the position ``g % N`` of that epoch's permutation; its
random draws come from a generator seeded by ``(seed, epoch, item)``. Iteration ``i`` of rank
``r`` of ``w`` takes samples ``(i·w + r)·b … (i·w + r)·b + b − 1``. So every batch is a function
of the seed and the iteration alone: a resumed run reads exactly the batches it would have read,
and ranks read disjoint samples (the shards of a distributed sampler).
"""
from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .augment import Augmentation
from .cache import CachedCase
from .samplers import Sample, Sampler


class EpochIndex:
    """Global sample numbers -> (case, item, generator), reshuffled every epoch."""

    def __init__(self, cases: Sequence[CachedCase], sampler: Sampler, seed: int):
        self.cases, self.sampler, self.seed = list(cases), sampler, seed
        self.items = [(c, k) for c, case in enumerate(self.cases) for k in range(sampler.count(case))]
        if not self.items:
            raise ValueError("the sampler finds no training samples in these cases (e.g. no tumor for a T model)")
        self._cached: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))  # one reference: thread-safe swap

    def __len__(self) -> int:
        return len(self.items)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the items in ``epoch``."""
        cached = self._cached
        if cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.items)))
            self._cached = cached
        return cached[1]

    def sample(self, number: int, augmentation: Augmentation | None = None) -> Sample:
        """Sample number ``number`` of the stream."""
        epoch, position = divmod(number, len(self.items))
        item = int(self.order(epoch)[position])
        case, index = self.items[item]
        rng = np.random.default_rng([self.seed, epoch, item])
        sample = self.sampler.sample(self.cases[case], index, rng)
        return augmentation(sample, rng) if augmentation is not None else sample


def collate(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack samples into batch tensors ``[B, 1, *P]``, ``[B, 1, *P]``, ``[B, C, *P]``."""
    return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*samples))


class BatchStream:
    """Batches of one rank from ``start_iteration`` on, ``prefetch`` iterations ahead in ``threads`` threads."""

    def __init__(self, index: EpochIndex, batch_size: int, start_iteration: int = 0, rank: int = 0, world_size: int = 1,
                 augmentation: Augmentation | None = None, prefetch: int = 4, threads: int = 2):
        self.index, self.batch_size = index, batch_size
        self.rank, self.world_size, self.augmentation = rank, world_size, augmentation
        self.next_iteration = start_iteration
        self.prefetch = max(1, prefetch)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="batches")
        self._pending: collections.deque[Future] = collections.deque()

    def sample_numbers(self, iteration: int) -> range:
        """Global sample numbers of this rank's batch at ``iteration``."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's batch at ``iteration`` (computed now, in the calling thread)."""
        return collate([self.index.sample(n, self.augmentation) for n in self.sample_numbers(iteration)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        while len(self._pending) < self.prefetch:
            self._pending.append(self._pool.submit(self.batch, self.next_iteration + len(self._pending)))
        self.next_iteration += 1
        return self._pending.popleft().result()

    def close(self) -> None:
        """Stop the prefetch threads (pending batches are dropped)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
