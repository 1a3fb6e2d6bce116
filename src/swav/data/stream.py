"""Streaming tar shards: WebDataset's layout read as a stream, from anywhere a shard can be
read in order — local paths, ``file:``, ``http(s)://`` URLs, ``pipe:<command>`` (the command's
standard output is the shard, e.g. ``pipe:aws s3 cp s3://bucket/shard-000001.tar -``), and any
other URL the ``webdataset`` package opens when it is installed. Brace lists
(``shard-{000000..000999}.tar``) give one shard each.

Nothing is listed at start-up: an epoch is a number of samples (``data.samples_per_epoch``),
split in whole batches over the processes and, within a process, over its loader workers. The
shards are shuffled each epoch and dealt out to the (process, worker) slots; each slot reads its
shards in turn through a shuffle buffer (``data.shuffle_buffer`` samples), going round its
shards again if it needs more samples than they hold. With as many shards per slot and
``samples_per_epoch`` equal to the data's size, every sample is read once per epoch. Every
process yields the same number of batches, so distributed steps never wait on a rank that ran
out. A shard that cannot be read (a failed command, a dropped connection, a cut archive) is
skipped, counted and logged; a slot none of whose shards can be read stops the run.

The order is a function of the seed, the epoch and the slot, so a run stopped mid-epoch resumes
at the same sample with the same number of processes and workers (the samples already read by
each slot are read again and skipped, not decoded).
"""

from __future__ import annotations

import logging
import random
import re
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from swav.data.images import DataError, is_image, load_rgb
from swav.data.loader import Corrupt, collate_crops, ignore_stop_signals, sample_seed
from swav.data.multicrop import MultiCrop
from swav.data.settings import STREAM_SCHEMES

log = logging.getLogger(__name__)

SCHEMES = STREAM_SCHEMES


def expand_braces(spec: str) -> list[str]:
    """Every name of a WebDataset brace list: ``a-{00..02}.tar`` -> a-00, a-01, a-02 (several
    ranges multiply; zero padding kept). A name without braces is itself."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if not m:
        return [spec]
    lo, hi = m.group(1), m.group(2)
    if int(hi) < int(lo):
        raise DataError(f"shard range {m.group(0)} in {spec!r} runs backwards")
    head, tail = spec[: m.start()], spec[m.end() :]
    return [
        name
        for n in range(int(lo), int(hi) + 1)
        for name in expand_braces(head + str(n).zfill(len(lo)) + tail)
    ]


def stream_shards(source: str) -> list[str]:
    """The shards a streaming source names (space-separated specs, each maybe a brace list);
    local files are checked before anything starts."""
    if source.startswith("pipe:"):  # one command, braces expanded inside it
        shards = expand_braces(source)
    else:
        shards = [name for spec in source.split() for name in expand_braces(spec)]
    local = [s[5:] if s.startswith("file:") else s for s in shards if not s.startswith(SCHEMES)]
    local += [s[5:] for s in shards if s.startswith("file:")]
    missing = [p for p in local if not Path(p).expanduser().is_file()]
    if missing:
        raise DataError(f"shards not found: {', '.join(missing[:3])}")
    if not shards:
        raise DataError(f"no shard in {source!r}")
    return shards


class _Pipe:
    """A command's standard output as a file; closing it checks the command's exit status."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.read = self.proc.stdout.read

    def close(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        status = self.proc.wait()
        if status not in (0, -13):  # -13: SIGPIPE after we stopped reading early
            raise OSError(f"{self.command!r} exited with status {status}")


def open_shard(url: str) -> IO[bytes] | _Pipe:
    """A readable stream of one shard."""
    if url.startswith("pipe:"):
        return _Pipe(url[5:])
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 (the user's own URL)
    if url.startswith("file:"):
        return open(Path(url[5:]).expanduser(), "rb")
    if url.startswith(SCHEMES):
        try:
            import webdataset
        except ImportError as e:
            raise DataError(
                f"{url}: this scheme needs the webdataset package (pip install webdataset), or "
                "read it through a command: pipe:<command writing the shard to stdout>"
            ) from e
        return webdataset.gopen(url)
    return open(Path(url).expanduser(), "rb")


def shard_samples(url: str) -> Iterator[tuple[str, bytes | None, int]]:
    """``(key, image bytes, label)`` of each sample of one shard, in order (files sharing a
    key up to their first dot; label -1 without a ``.cls``; image None without an image)."""
    stream = open_shard(url)
    key, image, label = None, None, -1
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:  # type: ignore[call-overload]
            for m in tf:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key:
                    if key is not None:
                        yield key, image, label
                    key, image, label = k, None, -1
                f = tf.extractfile(m)
                data = f.read() if f else b""
                if image is None and is_image(m.name):
                    image = data
                elif ext == "cls":
                    label = int(data.decode().strip() or -1)
        if key is not None:
            yield key, image, label
    finally:
        stream.close()


class StreamDataset(IterableDataset):
    """Multi-crops of streamed shards, ``samples_per_epoch`` per epoch in whole global batches;
    also the run's sampler (``set_epoch``, ``batches``, ``global_batch``, ``remaining_batches``)
    as ``EpochSampler`` is for the other sources."""

    def __init__(
        self,
        shards: list[str],
        transform: MultiCrop,
        batch_size: int,
        samples_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        as_uint8: bool = False,
        max_batches: int = 0,
    ) -> None:
        self.shards, self.transform, self.as_uint8 = shards, transform, as_uint8
        self.batch_size, self.seed, self.buffer = batch_size, seed, max(1, shuffle_buffer)
        self.rank, self.world_size = rank, world_size
        self.batches = samples_per_epoch // (batch_size * world_size)
        if max_batches:
            self.batches = min(self.batches, max_batches)
        self.epoch, self.start_batch = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: int | None = None) -> None:
        """Read epoch ``epoch`` from global batch ``start_batch`` (or the batch holding the
        ``start_sample``-th sample of the epoch)."""
        self.epoch = epoch
        self.start_batch = (
            start_batch if start_sample is None else start_sample // self.global_batch
        )

    def remaining_batches(self) -> int:
        return max(0, self.batches - self.start_batch)

    def __len__(self) -> int:
        return self.remaining_batches() * self.batch_size

    def _slot_shards(self, slot: int, slots: int) -> list[str]:
        """This slot's shards for the epoch: a seeded shuffle dealt out round-robin (every slot
        gets at least one, repeating shards when there are fewer shards than slots)."""
        order = list(self.shards)
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        if len(order) < slots:
            order = [order[i % len(order)] for i in range(slots)]
        return order[slot::slots]

    def _samples(self, slot: int, slots: int) -> Iterator[tuple[str, bytes | None, int]]:
        """The slot's samples through the shuffle buffer, endlessly: its shards again and
        again, each pass emptied from the buffer before the next begins."""
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}/{slots}")
        buffer: list[Any] = []
        mine = self._slot_shards(slot, slots)
        while True:
            read = 0
            for url in mine:
                try:
                    for sample in shard_samples(url):
                        read += 1
                        if len(buffer) < self.buffer:
                            buffer.append(sample)
                            continue
                        i = rng.randrange(len(buffer))
                        buffer[i], sample = sample, buffer[i]
                        yield sample
                except (OSError, tarfile.TarError, EOFError, ValueError) as e:
                    log.warning("shard %s could not be read to its end (%s): skipped", url, e)
            if not read:
                raise DataError(f"no sample could be read from the shards {', '.join(mine[:3])}")
            rng.shuffle(buffer)  # a pass ends whole: no sample of the next pass comes first
            while buffer:
                yield buffer.pop()

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # the loader takes batches from its workers in turn, so of an epoch read from its start
        # worker w makes batches w, w + W, ...: the "lane" w of batches. Read from a later
        # batch, worker w makes batches start + w, start + w + W, ...: it takes their lane on
        # and skips the samples of that lane's batches before the start.
        lane = (self.start_batch + wid) % workers
        slot, slots = self.rank * workers + lane, self.world_size * workers
        done_before = len(range(lane, self.start_batch, workers))
        todo = len(range(lane, self.batches, workers)) - done_before
        samples = self._samples(slot, slots)
        for _ in range(done_before * self.batch_size):  # resumed: read, not decoded
            next(samples)
        first = done_before * self.batch_size
        for n in range(first, first + max(0, todo) * self.batch_size):
            key, image, label = next(samples)
            if image is None:
                yield Corrupt(-1, key, "no image in the sample")
                continue
            try:
                img = load_rgb(image)
            except Exception as e:  # any decoder failure: skip the image, keep training
                yield Corrupt(-1, key, f"{type(e).__name__}: {e}")
                continue
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, slot * 10**9 + n))
            yield self.transform(img, g, self.as_uint8), label, -1


def make_stream_loader(
    dataset: StreamDataset, batch_size: int, workers: int, pin_memory: bool = False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_crops,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        worker_init_fn=ignore_stop_signals,
    )
