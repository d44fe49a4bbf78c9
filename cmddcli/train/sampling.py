"""A resumable, rank-aware stream of sample indices, and per-sample seeding of the data RNGs.

Why not ``DistributedSampler`` + a ``DataLoader`` iterator? Because ``--resume`` must continue *exactly*:
the position in the stream is a pure function of the step (``samples = (step - stage.start) · batch``),
and every sample carries its own seed, so random crops and flips do not depend on worker processes,
prefetching or how often the run was interrupted.

Stage ``k`` of a run with seed ``s`` walks epochs; epoch ``e`` is the permutation
``torch.randperm(n, generator=seed(s, k, e))`` (the same on every rank), padded by wrapping to a
multiple of the world size, and rank ``r`` takes positions ``r, r + W, r + 2W, ...`` (as
``DistributedSampler``). The sample at position ``j`` of epoch ``e`` gets the seed ``(s, k, e, j)``.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SampleStream", "SeededDataset", "sample_seed", "seeded_rngs"]


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class SampleStream:
    """Endless batches of ``(index, seed)`` for one stage, starting `start` samples into this rank's stream.

    Args:
        n: dataset length. batch: samples per batch (per rank). seed, stage: stream identity.
        rank, world: this process and the number of processes. start: samples already consumed.
    """

    def __init__(self, n: int, batch: int, seed: int, stage: int, rank: int = 0, world: int = 1, start: int = 0):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch, self.seed, self.stage = n, batch, seed, stage
        self.rank, self.world = rank, world
        self.per_rank = -(-n // world)  # ceil
        self.start = start

    def position(self, consumed: int) -> Tuple[int, int]:
        """(epoch, offset within this rank's share of the epoch) after `consumed` samples."""
        return divmod(consumed, self.per_rank)

    def _epoch(self, epoch: int) -> List[int]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.stage, epoch, 0x5EED))
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world
        perm += perm[: total - self.n] if total > self.n else []
        while len(perm) < total:  # tiny datasets with world > n
            perm += perm[: total - len(perm)]
        return perm[self.rank : total : self.world]

    def samples(self) -> Iterator[Tuple[int, int]]:
        epoch, offset = self.position(self.start)
        while True:
            idx = self._epoch(epoch)
            for j in range(offset, self.per_rank):
                yield idx[j], sample_seed(self.seed, self.stage, epoch, j * self.world + self.rank)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        it = self.samples()
        while True:
            yield [next(it) for _ in range(self.batch)]


@contextlib.contextmanager
def seeded_rngs(seed: int, restore: bool = True):
    """Seed python / numpy / torch global RNGs for one sample; restore the previous states afterwards."""
    if restore:
        py, npst, tst = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if restore:
            random.setstate(py)
            np.random.set_state(npst)
            torch.set_rng_state(tst)


class SeededDataset(Dataset):
    """Wraps a map-style dataset so that item ``(index, seed)`` draws its randomness from `seed`.

    Datasets with an ``rng_for(index)`` hook (:class:`cmddcli.data.datasets.PairsDataset`, ``SynthDataset``) get
    ``numpy.random.default_rng(seed)`` from it for that one item; any other dataset is called with the
    python / numpy / torch global RNGs seeded by `seed` (restored afterwards in the main process; in a
    worker process nothing else uses them).
    """

    def __init__(self, dataset, in_worker: bool):
        self.dataset = dataset
        self.in_worker = in_worker
        self.has_hook = callable(getattr(dataset, "rng_for", None))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if self.has_hook:
            self.dataset.rng_for = lambda _index: np.random.default_rng(seed)  # this item only
            try:
                return self.dataset[index]
            finally:
                del self.dataset.rng_for
        with seeded_rngs(seed, restore=not self.in_worker):
            return self.dataset[index]
