"""From a source to batches of multi-crops, deterministically and robustly.

Each sample's augmentation is drawn from its own generator, seeded by (run seed, epoch, index),
so a batch is the same whatever the number of workers, and a resumed run sees exactly the crops
an uninterrupted run would have seen. Images that fail to decode are skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from swav.data.multicrop import MultiCrop
from swav.data.sources import ImageSource, load_rgb
from swav.data.transforms import to_uint8_tensor

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@dataclass
class Decoded:
    """A decoded image (3 x H x W uint8) and its augmentation seed, for ``MultiCrop.batch``."""

    image: torch.Tensor
    seed: int

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


@dataclass
class Corrupt:
    index: int
    name: str
    error: str


class MultiCropDataset(Dataset):
    """Decodes ``source[index]`` and returns ``(crops, label, index)``, or ``Corrupt``.

    Keys are ``(index, seed)`` pairs from ``EpochSampler`` (or a plain index, with seed 0).
    With ``decode_only`` the crops are left to ``MultiCrop.batch`` on the training device and
    the first item is a ``Decoded`` image with its seed instead.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: MultiCrop,
        decode_only: bool = False,
        as_uint8: bool = False,
    ) -> None:
        """``as_uint8``: crops leave the worker as uint8 (``MultiCrop.normalize`` finishes
        them on the device), a quarter of the bytes of floats."""
        self.source = source
        self.transform = transform
        self.decode_only = decode_only
        self.as_uint8 = as_uint8

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item, label = self.source[index]
        try:
            img = load_rgb(item)
        except Exception as e:  # any decoder failure: skip the image, keep training
            names = self.source.names
            return Corrupt(index, names[index] if names else str(index), f"{type(e).__name__}: {e}")
        if self.decode_only:
            return Decoded(to_uint8_tensor(img), seed), label, index
        g = torch.Generator().manual_seed(seed)
        return self.transform(img, g, self.as_uint8), label, index


class EpochSampler(Sampler):
    """This rank's share of a seeded per-epoch permutation, as ``(index, sample seed)`` pairs.

    Only whole global batches are kept (drop_last), and iteration can start at a batch offset
    (resuming in the middle of an epoch).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int = 0,
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches = size // (batch_size * world_size)
        if max_batches:
            self.batches = min(self.batches, max_batches)
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: int | None = None) -> None:
        """Iterate epoch ``epoch`` from global batch ``start_batch``, or from ``start_sample``
        images into the epoch's order (resuming a run saved by another number of processes,
        whose position need not fall on a batch of this one)."""
        self.epoch = epoch
        self.start = start_batch * self.global_batch if start_sample is None else start_sample

    def _span(self) -> int:
        """Images of the epoch's order still to read, from ``start``: whole global batches,
        and after a resume off a batch boundary the last, partial one (when it gives every
        process at least two images; else it is left out like any incomplete batch)."""
        left = max(0, self.batches * self.global_batch - self.start)
        full, tail = divmod(left, self.global_batch)
        keep_tail = self.start % self.global_batch and tail >= 2 * self.world_size
        return full * self.global_batch + (tail if keep_tail else 0)

    def remaining_batches(self) -> int:
        return -(-self._span() // self.global_batch)

    def __len__(self) -> int:
        return len(range(self.rank, self._span(), self.world_size))

    def __iter__(self):
        # global batch t is the block perm[t * G : (t + 1) * G] (G = batch x processes), dealt
        # out rank by rank; a position in the epoch is therefore a number of images, valid for
        # any number of processes
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g)[: self.batches * self.global_batch]
        rest = perm[self.start : self.start + self._span()]
        for i in rest[self.rank :: self.world_size].tolist():
            yield i, sample_seed(self.seed, self.epoch, i)


def collate_crops(
    batch: list[Any],
) -> tuple[list[Any], torch.Tensor, torch.Tensor, list[Corrupt]]:
    """Stacks crops per position; drops and reports corrupt images.

    Returns ``(crops, labels, indices, corrupt)`` where ``corrupt`` lists ``Corrupt`` records;
    for decode-only samples ``crops`` is the list of ``Decoded`` images.
    """
    good = [b for b in batch if not isinstance(b, Corrupt)]
    bad = [b for b in batch if isinstance(b, Corrupt)]
    if not good:
        return [], torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad
    if isinstance(good[0][0], Decoded):
        crops = [b[0] for b in good]
    else:
        crops = [torch.stack([b[0][v] for b in good]) for v in range(len(good[0][0]))]
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return crops, labels, indices, bad


def make_loader(
    dataset: MultiCropDataset,
    sampler: EpochSampler,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_crops,
        pin_memory=pin_memory,
        drop_last=False,  # the sampler yields whole batches (a resumed epoch: its last too)
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
