"""Where images come from: folders, tar archives, torchvision datasets and the embedded digits.

Every source is a map-style dataset of ``(image, label)`` with ``label = -1`` when unknown.
Images are returned undecoded where possible (bytes or a path) and decoded by ``load_rgb`` in the
loader workers, which turns every PIL mode (L, LA, RGBA, P, CMYK, I;16, ...) into 8-bit RGB.
Labels are only kept for evaluation; training never looks at them.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swav.data.images import (
    IMAGE_EXTENSIONS,
    DataError,
    ImageSource,
    is_image,
)
from swav.data.listing import (
    ArchiveMembers,
    Listing,
    PackedStrings,
    cached_archive_listing,
    cached_folder_listing,
)
from swav.data.settings import DataConfig
from swav.data.shards import is_shard_set, shard_source

log = logging.getLogger(__name__)


def _entry_is(entry: os.DirEntry[str], kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()``, False for an entry that cannot be followed (a
    symbolic link in a loop, or to where this user may not look): skipped with a warning
    instead of ending the listing."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as e:
        log.warning("skipped %s: %s", entry.path, e.strerror or e)
        return False


def _walk_images(top: str, dirs: dict[str, int]) -> list[str]:
    """The image files under ``top`` at any depth, as sorted paths relative to it; every
    directory met is recorded in ``dirs`` with its modification time. Symbolic links to
    directories below ``top`` are not followed (as ``Path.rglob``)."""
    found, stack = [], [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(top, rel) if rel else top
        dirs[full] = os.stat(full).st_mtime_ns
        with os.scandir(full) as entries:
            for e in entries:
                name = os.path.join(rel, e.name) if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append(name)
                elif is_image(e.name) and _entry_is(e, "file"):
                    found.append(name)
    return sorted(found)


def _list_folder(root: Path) -> Listing:
    """A folder's images: an ImageFolder tree (class sub-folders: labelled) or any folder of
    images (unlabelled)."""
    top = str(root)
    with os.scandir(top) as entries:
        children = list(entries)
    subdirs = sorted(e.name for e in children if not e.name.startswith(".") and _entry_is(e, "dir"))
    direct = any(is_image(e.name) and _entry_is(e, "file") for e in children)
    dirs: dict[str, int] = {}
    names: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    if subdirs and not direct:
        dirs[top] = os.stat(top).st_mtime_ns
        for d in subdirs:
            files = _walk_images(os.path.join(top, d), dirs)
            if files:  # class folders that hold no image are not classes
                names += [os.path.join(d, f) for f in files]
                labels += [len(classes)] * len(files)
                classes.append(d)
    else:
        names = _walk_images(top, dirs)
        labels = [-1] * len(names)
    return Listing(names, np.asarray(labels, dtype=np.int32), classes, top, dirs)


def folder_source(root: str | Path, split: str = "") -> ImageSource:
    """An ImageFolder tree (class sub-folders: labelled) or any folder of images (unlabelled);
    the listing is cached (``swav.data.listing``)."""
    root = Path(root).expanduser()
    if split and (root / split).is_dir():
        root = root / split
    if not root.exists():
        raise DataError(f"data path {root} does not exist: give a folder of images or an archive")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder or an image archive (.tar, .tar.gz)")
    listing = cached_folder_listing(root, split, _list_folder)
    if not len(listing.names):
        raise DataError(
            f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "point data.source at a folder that holds images"
        )
    names = listing.names
    items = (
        names.joined(str(root))
        if isinstance(names, PackedStrings)
        else [os.path.join(root, n) for n in names]
    )
    return ImageSource(items, listing.labels.tolist(), listing.classes, str(root), names)


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    if f is None:
        raise DataError(f"{member.name} in {tf.name!r} is not a regular file")
    return f.read()


def tar_source(path: str | Path, split: str = "") -> ImageSource:
    """Images inside a .tar / .tar.gz / .tgz archive, read in place.

    Layout ``[<root>/][<split>/]<class>/<image>`` gives labels; images without a class folder are
    unlabelled. An uncompressed archive is read lazily by offset; a compressed one is
    decompressed once into the listing cache and read by offset from there (without a cache,
    it is read into memory, which suits archives up to a few GB).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"archive {path} does not exist")
    try:
        listing = cached_archive_listing(path, split, lambda tar: _list_archive(tar, split))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"archive {path} is damaged ({e}); download or copy it again") from e
    if not len(listing.names):
        where = f" in split {split!r}" if split else ""
        raise DataError(f"no images found{where} in archive {path}; check data.split")
    items: Sequence[Any]
    if listing.offsets is not None and listing.sizes is not None:
        items = ArchiveMembers(listing.root, listing.offsets, listing.sizes)
    else:
        items = listing.data or []
    origin = f"{path}:{split}" if split else str(path)
    return ImageSource(items, listing.labels.tolist(), listing.classes, origin, listing.names)


def _list_archive(path: Path, split: str) -> Listing:
    """The images of one archive in ``split``: by offset for an uncompressed one, as bytes
    read into memory for a compressed one."""
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path} is not a readable tar archive: {e}") from e
    compressed = not str(path).endswith(".tar")
    with tf:
        entries = _tar_entries(tf, path, split, compressed)
    entries.sort(key=lambda e: e[0])
    labelled = bool(entries) and all(len(p) >= 2 for _, p, _ in entries)
    classes = sorted({p[-2] for _, p, _ in entries}) if labelled else []
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[p[-2]] if labelled else -1 for _, p, _ in entries], np.int32)
    names = [n for n, _, _ in entries]
    if compressed:
        return Listing(names, labels, classes, str(path), {}, data=[d for _, _, d in entries])
    offsets = np.asarray([d[1] for _, _, d in entries], dtype=np.int64)
    sizes = np.asarray([d[2] for _, _, d in entries], dtype=np.int64)
    return Listing(names, labels, classes, str(path), {}, offsets=offsets, sizes=sizes)


def _tar_entries(
    tf: tarfile.TarFile, path: Path, split: str, compressed: bool
) -> list[tuple[str, tuple[str, ...], Any]]:
    """(name, path parts below the split, bytes or (file, offset, size)) of every image."""
    entries = []
    for m in tf:
        if not m.isfile() or not is_image(m.name):
            continue
        parts = Path(m.name).parts
        if any(p.startswith(".") for p in parts):
            continue
        if split:
            if split not in parts[:-1]:
                continue
            parts = parts[parts.index(split) + 1 :]
        data = _member_bytes(tf, m) if compressed else (str(path), m.offset_data, m.size)
        entries.append((m.name, parts, data))
    if not compressed:
        _check_tar_complete(tf, path)
    return entries


def _check_tar_complete(tf: tarfile.TarFile, path: Path) -> None:
    """tarfile stops without a word at a truncated header: an intact archive ends with zero
    blocks (the end marker) after its last member, and every member's data fits in the file."""
    members = tf.getmembers()
    if members and members[-1].offset_data + members[-1].size > path.stat().st_size:
        raise tarfile.ReadError(f"{members[-1].name} is cut short")
    with open(path, "rb") as f:
        f.seek(tf.offset)
        tail = f.read(1 << 20)
    if any(tail):
        raise tarfile.ReadError(f"it ends inside a header after {len(members)} members")
    if not tail:
        raise tarfile.ReadError(f"it ends after {len(members)} members without the end marker")


def digits_source(split: str = "train", seed: int = 0, test_fraction: float = 0.2) -> ImageSource:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, offline.

    ``split`` is 'train' or 'test' (a stratified split drawn from ``seed``), or '' for all.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx = np.arange(len(images))
    if split in ("train", "test", "val"):
        tr, te = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=d.target
        )
        idx = np.sort(tr if split == "train" else te)
    elif split:
        raise DataError(f"digits has splits 'train' and 'test', not {split!r}")
    return ImageSource(
        [images[i] for i in idx],
        [int(d.target[i]) for i in idx],
        [str(c) for c in range(10)],
        f"digits:{split or 'all'}",
    )


STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled", "")


def torchvision_source(name: str, root: str, split: str, download: bool) -> ImageSource:
    """CIFAR-10 / CIFAR-100 / STL-10 from torchvision; downloads only when ``download``."""
    import torchvision.datasets as tvd

    root = str(Path(root).expanduser())
    known = ("train", "", "test", "val") if name.startswith("cifar") else STL10_SPLITS
    if split not in known:
        shown = ", ".join(repr(k) for k in known if k)
        raise DataError(f"{name} has splits {shown}, not {split!r}")
    train = split in ("train", "", "unlabeled", "train+unlabeled")
    try:
        if name == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=download)
        elif name == "cifar100":
            ds = tvd.CIFAR100(root, train=train, download=download)
        else:
            ds = tvd.STL10(root, split=split or "train", download=download)
    except RuntimeError as e:
        raise DataError(
            f"{name} is not in {root}: allow the download (data.download=true when training, "
            "--download-data when evaluating), or set data.root to where it is"
        ) from e
    except OSError as e:  # urllib's URLError and friends: no internet, a proxy, a full disk
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {name} into {root} ({reason}): without internet, fetch it on "
            "another machine and copy it there (data.root), or train on a folder or archive"
        ) from e
    if name.startswith("cifar"):
        items, labels, classes = list(ds.data), [int(t) for t in ds.targets], list(ds.classes)
    else:
        items = [np.transpose(x, (1, 2, 0)) for x in ds.data]
        labels = [int(t) for t in ds.labels]
        classes = list(ds.classes)
    return ImageSource(items, labels, classes, f"{name}:{split}")


def open_source(
    source: str,
    split: str = "train",
    root: str = "~/.cache/swav/datasets",
    download: bool = False,
    seed: int = 0,
    strict: bool = False,
) -> ImageSource:
    """Any supported source by name or path (see ``swav.config.DataConfig.source``).

    A folder or a shard set without the ``split`` sub-folder is read whole (the default split
    ``train`` of a flat folder of photos), unless ``strict``: a split the user named must be
    there, never silently replaced by every image."""
    if not source:
        raise DataError("no data given: set data.source to a folder, an archive or 'digits'")
    if source == "digits":
        return digits_source(split, seed)
    if source in ("cifar10", "cifar100", "stl10"):
        return torchvision_source(source, root, split, download)
    if split and is_shard_set(str(Path(source) / split)):  # OUT/train, OUT/val, ... packed apart
        return shard_source(str(Path(source) / split))
    p = Path(source).expanduser()
    if strict and split and (is_shard_set(source) or p.is_dir()) and not (p / split).is_dir():
        there = sorted(d.name for d in p.iterdir() if d.is_dir()) if p.is_dir() else []
        raise DataError(
            f"{source} has no split {split!r}"
            + (f" (its sub-folders: {', '.join(there[:10])})" if there else "")
            + "; leave the split out to read every image"
        )
    if is_shard_set(source):
        return shard_source(source)
    if p.is_file() and (p.name.endswith((".tar", ".tar.gz", ".tgz"))):
        return tar_source(p, split)
    if p.is_file():
        raise DataError(f"{p} is a file but not a .tar / .tar.gz archive of images")
    return folder_source(p, split)


def limit_source(src: ImageSource, limit: int, seed: int = 0) -> ImageSource:
    """The first ``limit`` images of a fixed random permutation (class balance kept on average)."""
    if not limit or limit >= len(src):
        return src
    g = torch.Generator().manual_seed(seed)
    return src.subset(sorted(torch.randperm(len(src), generator=g)[:limit].tolist()))


def training_source(cfg: DataConfig, seed: int = 0) -> ImageSource:
    """The images a run trains on: ``cfg.source`` / ``cfg.split``, limited to ``cfg.limit``."""
    src = open_source(cfg.source, cfg.split, cfg.root, cfg.download, seed)
    return limit_source(src, cfg.limit, seed)


def heldout_source(cfg: DataConfig, seed: int = 0, limit: int = 0) -> ImageSource:
    """The held-out split of the training data (``cfg.eval_split``), for evaluation."""
    src = open_source(cfg.source, cfg.eval_split, cfg.root, cfg.download, seed)
    return limit_source(src, limit, seed)
