"""Listings of folders and archives, made once per dataset and shared by every process.

Listing a folder of a million images (and decompressing a ``.tar.gz``) on every process of every
run costs minutes and gigabytes before the first step. The first process to open a dataset
writes its listing to the cache (``$SWAV_CACHE_DIR``, default ``~/.cache/swav``; ``off``
disables it): the names as one bytes array with offsets, the labels and the classes, loaded
memory-mapped, so the processes of a node share one copy through the page cache and hold no
Python object per image. A ``.tar.gz`` is decompressed there once into a plain ``.tar``, read
by offset from then on.

A folder's listing stays valid while no directory of its tree changes its modification time
(adding, removing or renaming an entry anywhere changes its directory's); an archive's while
its size and modification time are those listed. Processes that start together wait on a file
lock for the first one's listing instead of all making it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from swav.errors import UsageError

log = logging.getLogger(__name__)

FORMAT = 1
CACHE_ENV = "SWAV_CACHE_DIR"


def cache_root() -> Path | None:
    """Where listings are cached (``$SWAV_CACHE_DIR``, default ``~/.cache/swav``), or None when
    the variable is ``off`` / ``0`` / empty."""
    value = os.environ.get(CACHE_ENV, "~/.cache/swav")
    if value.strip().lower() in ("", "off", "0", "false", "no"):
        return None
    root = Path(value).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"{CACHE_ENV}={value} is a file: point it to a folder for the listing cache, or set "
            f"{CACHE_ENV}=off"
        )
    return root / "listings"


class PackedStrings(Sequence[str]):
    """Strings kept as one bytes array and offsets (file names as the file system gives them,
    undecodable bytes kept), optionally joined to a folder: no Python object per entry."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, prefix: str = "") -> None:
        self.blob, self.offsets, self.prefix = blob, offsets, prefix

    @classmethod
    def pack(cls, names: Sequence[str]) -> PackedStrings:
        encoded = [os.fsencode(n) for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(blob, offsets)

    def joined(self, prefix: str) -> PackedStrings:
        """The same names under the folder ``prefix``."""
        return PackedStrings(self.blob, self.offsets, prefix)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        name = os.fsdecode(self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes())
        return os.path.join(self.prefix, name) if self.prefix else name

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class ArchiveMembers(Sequence[tuple[str, int, int]]):
    """``(archive path, data offset, size)`` of every listed member, read lazily by offset."""

    def __init__(self, path: str, offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.path, self.offsets, self.sizes = path, offsets, sizes

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, i: int) -> tuple[str, int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, int, int]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return (self.path, int(self.offsets[i]), int(self.sizes[i]))


@dataclass
class Listing:
    """What a source needs from a listing: names (relative to ``root``), labels, classes and,
    for an archive, the members' offsets and sizes; ``dirs`` are the folder's directories and
    their modification times when it was listed."""

    names: Sequence[str]
    labels: np.ndarray
    classes: list[str]
    root: str
    dirs: dict[str, int]
    offsets: np.ndarray | None = None
    sizes: np.ndarray | None = None
    data: list[bytes] | None = None
    """The members' bytes, for a compressed archive read into memory (never cached)."""


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts]).encode()).hexdigest()[:24]


def _dirs_unchanged(dirs: dict[str, int]) -> bool:
    try:
        return all(os.stat(d).st_mtime_ns == t for d, t in dirs.items())
    except OSError:
        return False


def _archive_signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``lock`` (processes opening the same dataset wait for the one
    that lists it); without a usable lock file the listing is simply made again."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _save(listing: Listing, folder: Path, about: dict[str, Any]) -> None:
    """Writes the listing into a new folder beside ``folder`` and renames it into place;
    ``about`` (what was listed: kind, source, split, archive signature) goes into its meta."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    packed = PackedStrings.pack(list(listing.names))
    np.save(tmp / "names.npy", packed.blob)
    np.save(tmp / "offsets.npy", packed.offsets)
    np.save(tmp / "labels.npy", np.asarray(listing.labels, dtype=np.int32))
    if listing.offsets is not None and listing.sizes is not None:
        np.save(tmp / "member_offsets.npy", np.asarray(listing.offsets, dtype=np.int64))
        np.save(tmp / "member_sizes.npy", np.asarray(listing.sizes, dtype=np.int64))
    meta = {"classes": listing.classes, "root": listing.root, "dirs": listing.dirs, **about}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load(folder: Path) -> Listing | None:
    """The listing saved in ``folder``, memory-mapped; None when there is none (or it cannot be
    read: it is then made again)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r")
            for name in ("names", "offsets", "labels")
        }
        members = folder / "member_offsets.npy"
        offsets = np.load(members, mmap_mode="r") if members.exists() else None
        sizes = np.load(folder / "member_sizes.npy", mmap_mode="r") if offsets is not None else None
    except (OSError, ValueError, KeyError):
        return None
    names = PackedStrings(arrays["names"], arrays["offsets"])
    return Listing(
        names,
        arrays["labels"],
        meta["classes"],
        meta["root"],
        meta["dirs"],
        offsets=offsets,
        sizes=sizes,
    )


def _keep(listing: Listing, folder: Path, what: Path, about: dict[str, Any]) -> Listing:
    """``listing`` saved to the cache ``folder`` and mapped back from it; the listing itself
    (with a warning) when the cache cannot be written."""
    try:
        _save(listing, folder, {"source": str(what.resolve()), **about})
    except OSError as e:
        log.warning("could not cache the listing of %s in %s (%s)", what, folder.parent, e)
        return listing
    log.info("listed %s: %d images (cached in %s)", what, len(listing.names), folder)
    return _load(folder) or listing


def cached_folder_listing(root: Path, split: str, make: Any) -> Listing:
    """The listing of the folder ``root`` (``make(root)`` lists it), from the cache when its
    directories have not changed since."""
    cache = cache_root()
    if cache is None:
        return make(root)
    folder = cache / _key("folder", str(root.resolve()), split)
    with _locked(folder.with_suffix(".lock")):
        found = _load(folder)
        if found is not None and _dirs_unchanged(found.dirs):
            return found
        return _keep(make(root), folder, root, {"kind": "folder", "split": split})


def cached_archive_listing(path: Path, split: str, make: Any) -> Listing:
    """The listing of the archive ``path`` restricted to ``split`` (``make(tar_path)`` lists
    an uncompressed archive), from the cache when the archive is unchanged. A compressed
    archive is decompressed into the cache once, and its members are read from that copy."""
    cache = cache_root()
    compressed = not str(path).endswith(".tar")
    if cache is None:
        return make(path)
    stamp = _archive_signature(path)
    signature = [str(path.resolve()), stamp]
    folder = cache / _key("archive", *signature, split)
    with _locked(folder.with_suffix(".lock")):
        found = _load(folder)
        if found is not None and found.offsets is not None and Path(found.root).is_file():
            return found
        tar = path
        if compressed:
            tar = cache / f"{_key('decompressed', *signature)}.tar"
            if not tar.is_file() and not _decompress(path, tar, stamp):
                return make(path)
        about = {"kind": "archive", "split": split, "signature": stamp}
        return _keep(make(tar), folder, path, about)


def _decompress(path: Path, tar: Path, signature: list[int]) -> bool:
    """``path`` (gzip) decompressed into ``tar``, with a note of its source beside it; False
    (with a warning) when the cache has no room for it. A damaged archive raises the
    decompressor's error."""
    tmp = tar.with_name(tar.name + f".tmp{os.getpid()}")
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, gzip.BadGzipFile) or "Not a gzipped file" in str(e):
            raise
        log.warning("could not decompress %s into the cache (%s): reading it in memory", path, e)
        return False
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, tar)
    source = str(path.resolve())
    with contextlib.suppress(OSError):
        tar.with_suffix(".json").write_text(json.dumps({"source": source, "signature": signature}))
    log.info("decompressed %s once into %s; it is read by offset from there", path, tar)
    older = [e for e in cache_entries(tar.parent) if e.source == source and e.stale]
    if older:
        log.warning(
            "the cache still holds %s of %s as it was before it changed (%s); `swav cache "
            "--prune` removes it once no run reads the old version",
            size_text(sum(e.size for e in older)),
            path,
            ", ".join(e.path.name for e in older),
        )
    return True


UNFINISHED_AFTER_S = 3600.0
"""A half-written entry (``*.tmp<pid>``) untouched for this long was left by a stopped process."""


@dataclass
class CacheEntry:
    """One thing in the listing cache: a listing or a decompressed archive, what it was made
    from and, when it can go, why (``stale``; empty while it is current)."""

    path: Path
    kind: str
    source: str | None
    split: str
    size: int
    stale: str


def tree_size(path: Path) -> int:
    """Bytes in the file ``path``, or in every file under the folder ``path`` (files that
    another process removes meanwhile count 0)."""
    total = 0
    for f in [path, *(path.rglob("*") if path.is_dir() else [])]:
        with contextlib.suppress(OSError):
            total += f.stat().st_size if f.is_file() else 0
    return total


def size_text(n: float) -> str:
    """``n`` bytes for a reader: '740 B', '737.4 kB', '67.4 MB', '1.2 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _staleness(source: str, signature: list[int] | None) -> str:
    """Why an entry made from ``source`` (an archive when ``signature`` is given) is stale."""
    p = Path(source)
    if not p.exists():
        return "its source is gone"
    if signature is not None and _archive_signature(p) != list(signature):
        return "its archive has changed since"
    return ""


OLDER = "made by an older version that did not note its source"


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Everything in the listing cache ``root`` (default: :func:`cache_root`), largest first.

    A listing is stale when its folder or archive is gone or the archive changed (a changed
    folder is listed again in place); a decompressed copy when its archive is gone or changed;
    an archive's listing or copy made before sources were noted when no current listing reads
    it; a half-written entry when nobody has written to it for an hour."""
    root = root or cache_root()
    if root is None or not root.is_dir():
        return []
    entries: list[CacheEntry] = []
    read: set[str] = set()  # the archive copies that a current listing reads
    for p in sorted(root.iterdir()):
        if p.suffix in (".lock", ".json"):
            continue
        try:
            entry = _entry(p, read)
        except FileNotFoundError:  # renamed or removed by a process writing the cache
            continue
        if entry is not None:
            entries.append(entry)
    for e in entries:  # a copy without a note is kept while a current listing reads it
        if e.kind == "decompressed archive" and e.source is None and str(e.path) in read:
            e.stale = ""
    return sorted(entries, key=lambda e: -e.size)


def _entry(p: Path, read: set[str]) -> CacheEntry | None:
    """The cache entry at ``p``; the archive copies a current listing reads go into ``read``."""
    size = tree_size(p)
    if ".tmp" in p.name:
        idle = time.time() - p.stat().st_mtime
        why = "a stopped process left it half-written" if idle > UNFINISHED_AFTER_S else ""
        return CacheEntry(p, "unfinished", None, "", size, why)
    if p.is_dir():
        try:
            meta = json.loads((p / "meta.json").read_text())
        except (OSError, ValueError):
            return CacheEntry(p, "unreadable", None, "", size, "it cannot be read")
        archive = (p / "member_offsets.npy").exists()
        source = meta.get("source", None if archive else meta.get("root"))
        why = _staleness(source, meta.get("signature")) if source else OLDER
        if archive and not why and not Path(str(meta.get("root"))).is_file():
            why = "the archive copy it reads is gone"
        if not why:
            read.add(str(meta.get("root")))
        kind = f"{'archive' if archive else 'folder'} listing"
        return CacheEntry(p, kind, source, meta.get("split", ""), size, why)
    if p.suffix == ".tar":
        try:
            note = json.loads(p.with_suffix(".json").read_text())
        except (OSError, ValueError):
            note = {}
        source = note.get("source")
        why = _staleness(source, note.get("signature")) if source else OLDER
        return CacheEntry(p, "decompressed archive", source, "", size, why)
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clear_cache(root: Path) -> int:
    """Removes everything in the listing cache ``root``; the bytes freed."""
    freed = 0
    for p in root.iterdir() if root.is_dir() else []:
        freed += tree_size(p)
        _remove(p)
    return freed


def remove_cache_entries(entries: Sequence[CacheEntry]) -> int:
    """Removes ``entries`` (with their lock files and notes); the bytes freed."""
    for e in entries:
        _remove(e.path)
        if ".tmp" not in e.path.name:  # a half-written entry has no lock or note of its own
            _remove(e.path.with_suffix(".lock"))
            _remove(e.path.with_suffix(".json"))
    return sum(e.size for e in entries)
