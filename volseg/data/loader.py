"""The training data loader: built once per run, its worker processes kept between epochs.

Every patch is a function of (seed, epoch, rank, position in the epoch) alone: the
:class:`EpochSampler` draws the epoch's case indices and one seed per position, and
:class:`SeededSamples` seeds the random transforms (and torch's and NumPy's global generators)
from that seed before making the patch. So the batches do not depend on the number of workers,
on which worker makes which patch, or on whether the workers were started this epoch or at the
start of the run, and a resumed run sees the batches an uninterrupted one does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any, Literal, Union

import numpy as np
import torch
from monai.data import DataLoader

from volseg.errors import ConfigError

#: The most workers ``auto`` gives one rank: nnU-Net's default number of augmentation processes per GPU.
MAX_AUTO_WORKERS = 12


def seed_for(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_num_workers(value: Union[int, Literal["auto"]], ranks_on_node: int = 1) -> int:
    """``data.num_workers`` as a count: an integer >= 0 as it is; ``auto`` shares this process's
    cores among the ``ranks_on_node`` training processes, leaves one core per rank to the rank
    itself and caps the rest at :data:`MAX_AUTO_WORKERS`: ``max(0, min(12, cores // ranks - 1))``
    (2 cores and 1 rank: 1 worker; 16 cores: 12; 64 cores and 8 ranks: 7; 1 core: 0, the patches
    are made in the training process)."""
    if value == "auto":
        return max(0, min(MAX_AUTO_WORKERS, available_cores() // max(1, ranks_on_node) - 1))
    return int(value)  # checked (>= 0) by volseg.config.check_config


class EpochSampler(torch.utils.data.Sampler):
    """``num_samples`` keys ``(sample seed, dataset index)`` per epoch, drawn with replacement from
    ``size`` cases; both a function of ``(seed, epoch, rank)``. Call :meth:`set_epoch` before each epoch."""

    def __init__(self, size: int, num_samples: int, *, seed: int, rank: int = 0) -> None:
        if size < 1:
            raise ConfigError("no training cases to sample patches from; check data.root and the folds")
        self.size, self.num_samples, self.seed, self.rank, self.epoch = size, num_samples, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).spawn(2)
        chosen = np.random.default_rng(indices).integers(self.size, size=self.num_samples)
        return zip(seeds.generate_state(self.num_samples).tolist(), chosen.tolist())


class SeededSamples(torch.utils.data.Dataset):
    """``samples[(seed, index)]`` is ``dataset[index]`` with ``dataset.transform``'s random transforms
    and torch's and NumPy's global generators seeded from ``seed``; the global generators are
    restored afterwards (so patches made in the training process leave its own streams alone)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        self.dataset.transform.set_random_state(seed=seed)
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(numpy_state)


def training_loader(
    dataset: Sized, *, batch_size: int, steps: int, num_workers: int, seed: int, rank: int = 0, pin_memory: bool = False
) -> DataLoader:
    """The run's loader over ``dataset`` (a MONAI dataset with a ``transform``): ``steps`` batches of
    ``batch_size`` patches per epoch; set the epoch with ``loader.sampler.set_epoch(epoch)`` before
    ``iter(loader)``. With workers, they are started on the first ``iter`` and kept for the run."""
    sampler = EpochSampler(len(dataset), steps * batch_size, seed=seed, rank=rank)
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        # Its own generator: the workers' base seed is never drawn from the training process's stream.
        generator=torch.Generator().manual_seed(seed_for(seed, rank)),
    )
