"""The data settings (``data.*``) and the names that tell one kind of source from another,
importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.228, 0.224, 0.225)
STREAM_SCHEMES = ("pipe:", "http://", "https://", "file:", "gs://", "s3://", "ais://", "hf://")
"""The prefixes of a streaming source (shards read in order, never listed)."""


NAMED_SOURCES = ("digits", "cifar10", "cifar100", "stl10")
"""Sources given by name: the embedded digits and the torchvision datasets."""


def missing_path(source: str) -> str | None:
    """The path ``source`` names when it is a plain path that does not exist (None for a
    named source, a stream, a shard pattern, or a path that exists)."""
    if source in NAMED_SOURCES or is_stream(source) or any(c in source for c in "{}*?["):
        return None
    path = Path(source).expanduser()
    return None if path.exists() else str(path)


def is_stream(source: str) -> bool:
    """Whether ``source`` names shards to stream (a URL or ``pipe:`` command)."""
    return source.startswith(STREAM_SCHEMES)


@dataclass
class DataConfig:
    source: str = "digits"
    """Images to train on: a folder (ImageFolder tree or any-depth folder of images), a .tar /
    .tar.gz archive, 'digits' (scikit-learn's bundled handwritten digits, offline), or
    'cifar10' / 'cifar100' / 'stl10' (torchvision; downloads only with data.download=true)."""
    split: str = "train"
    """Sub-folder of a folder or archive to read (e.g. 'train'); '' reads everything."""
    eval_split: str = "test"
    """Held-out split for evaluation after training (e.g. 'test', 'val')."""
    root: str = "~/.cache/swav/datasets"
    """Where torchvision datasets are stored (and downloaded to, if asked)."""
    download: bool = False
    """Allow torchvision datasets to download. Never needed for folders, archives or 'digits'."""
    limit: int = 0
    """Use only the first N images of a fixed random permutation (0: all)."""
    samples_per_epoch: int = 0
    """Samples in an epoch of a streaming source (pipe:/http(s):// shards, see
    swav.data.stream), which is never listed; required there. Ignored by other sources."""
    shuffle_buffer: int = 1000
    """Samples a streaming source mixes in memory (each loader worker)."""
    transfer: str = "uint8"
    """How crops travel from the loader workers: 'uint8' (a quarter of the bytes; normalised on
    the training device) or 'float' (normalised in the workers)."""
    workers: int = -1
    """DataLoader worker processes per training process (0: load in the main process; -1:
    sized with train.threads to the cores the process may use, printed at start)."""
