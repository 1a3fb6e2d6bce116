"""From a source to batches of multi-crops, deterministically and robustly.

Each sample's augmentation is drawn from its own generator, seeded by (run seed, epoch, index),
so a batch is the same whatever the number of workers, and a resumed run sees exactly the crops
an uninterrupted run would have seen. Images that fail to decode are skipped and counted.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from swav.data.images import ImageSource, load_rgb
from swav.data.multicrop import MultiCrop
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
class Encoded:
    """A JPEG's bytes (a 1-D uint8 tensor) and its augmentation seed, for decoding a whole
    batch on the training device (``decode_batch``): the loader workers then only read files."""

    data: torch.Tensor
    seed: int
    name: str

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def _jpeg_bytes(item: Any) -> bytes | None:
    """The bytes of ``item`` when it is a JPEG (bytes, or a path to one), else None."""
    if isinstance(item, str) and item.lower().endswith((".jpg", ".jpeg")):
        with open(item, "rb") as f:
            item = f.read()
    if isinstance(item, bytes | bytearray) and item[:3] == b"\xff\xd8\xff":
        return bytes(item)
    return None


def decode_batch(
    images: list[Decoded | Encoded], device: torch.device | str
) -> tuple[list[torch.Tensor], list[int], list[str]]:
    """The batch's images as 3 x H x W uint8 tensors on ``device``: JPEGs decoded there in one
    call (nvJPEG on a GPU), the others as the workers decoded them. Returns the images, the
    positions in ``images`` they come from, and the names of JPEGs that failed to decode
    (skipped, as a worker skips a corrupt file)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [i for i, x in enumerate(images) if isinstance(x, Encoded)]
    out: dict[int, torch.Tensor] = {
        i: x.image.to(device, non_blocking=True)
        for i, x in enumerate(images)
        if isinstance(x, Decoded)
    }
    failed: list[str] = []
    if encoded:
        data = [images[i].data for i in encoded]  # type: ignore[union-attr]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            decoded = []
            for i, d in zip(encoded, data):
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
                    failed.append(images[i].name)  # type: ignore[union-attr]
        out.update({i: d for i, d in zip(encoded, decoded) if d is not None})
    kept = sorted(out)
    return [out[i] for i in kept], kept, failed


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
        jpeg_on_device: bool = False,
    ) -> None:
        """``as_uint8``: crops leave the worker as uint8 (``MultiCrop.normalize`` finishes
        them on the device), a quarter of the bytes of floats. ``jpeg_on_device`` (with
        ``decode_only``): JPEGs leave the worker undecoded, as ``Encoded``, for
        ``decode_batch`` on the device."""
        self.source = source
        self.transform = transform
        self.decode_only = decode_only
        self.as_uint8 = as_uint8
        self.jpeg_on_device = jpeg_on_device and decode_only

    def __len__(self) -> int:
        return len(self.source)

    def _name(self, index: int) -> str:
        names = self.source.names
        return names[index] if names else str(index)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item, label = self.source[index]
        if self.jpeg_on_device:
            jpeg = _jpeg_bytes(item)
            if jpeg is not None:
                data = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
                return Encoded(data, seed, self._name(index)), label, index
        try:
            img = load_rgb(item)
        except Exception as e:  # any decoder failure: skip the image, keep training
            return Corrupt(index, self._name(index), f"{type(e).__name__}: {e}")
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
    if isinstance(good[0][0], Decoded | Encoded):
        crops = [b[0] for b in good]
    else:
        crops = [torch.stack([b[0][v] for b in good]) for v in range(len(good[0][0]))]
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return crops, labels, indices, bad


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A loader worker's first act: leave SIGINT and SIGTERM to the main process.

    torchrun signals each rank's whole process group, SLURM every process of a step, and a
    terminal every process in the foreground. A worker that died of that signal would take
    with it the batch the main process needs to reach the end of its iteration and save
    (``DataLoader worker ... killed by signal``), so the run would stop with nothing saved.
    The workers end when the main process ends its loader, or when it dies (they watch it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
        worker_init_fn=ignore_stop_signals,
    )
