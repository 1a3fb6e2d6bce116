"""Tar shards for data at scale: WebDataset's layout (one uncompressed ``.tar`` per shard, the
files of a sample sharing a key: ``<key>.jpg`` and ``<key>.cls``), with an ``index.json`` of
every member's offset, so that opening a million images reads one small file instead of
listing a folder or decompressing an archive on every process.

``swav shards SRC OUT --shard-size N`` packs a folder, an archive or a dataset; a shard set is
then opened as data like any folder (``data.source=OUT``, or a glob / brace list of shards such
as ``OUT/shard-{000000..000009}.tar``). Images are read by offset, lazily, and the epoch order,
the split over processes and over loader workers are those of every other source: each image
once per epoch.
"""

from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from swav.data.images import DataError, ImageSource, is_image

FORMAT = "swav-shards/1"
INDEX = "index.json"


def _encoded(source: ImageSource, i: int) -> tuple[bytes, str]:
    """The bytes of image ``i`` as stored (its original encoding when it has one) and the
    file extension."""
    item, _ = source[i]
    if isinstance(item, bytes | bytearray):
        name = source.item_names()[i]
        return bytes(item), Path(name).suffix.lower() or ".jpg"
    if isinstance(item, str):
        return Path(item).read_bytes(), Path(item).suffix.lower()
    buf = io.BytesIO()
    arr = np.asarray(item)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), ".png"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))
    # the writer's position is past the data, padded to whole 512-byte blocks
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return tf.offset - padded, len(data)


def pack_shards(
    source: ImageSource, out: str | Path, shard_size: int = 10_000, seed: int | None = 0
) -> Path:
    """Write ``source`` as shards of ``shard_size`` images into the folder ``out`` (which must
    not hold a shard set yet), with its ``index.json``. Returns the index's path.

    The images are packed in a random order drawn from ``seed`` (None: the listing order).
    A listing is ordered by class folder, and a stream reads shard after shard: packed in that
    order, a batch would hold two or three classes, and SwAV's equal partition of each batch
    would split those few classes instead of the data."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    if (out / INDEX).exists():
        raise DataError(f"{out} already holds a shard set: choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    names, shards = source.item_names(), list[dict[str, Any]]()
    order = np.arange(len(source))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(source))
    for start in range(0, len(source), shard_size):
        path = out / f"shard-{len(shards):06d}.tar"
        members = []
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for position in range(start, min(start + shard_size, len(source))):
                i = int(order[position])
                key = f"{position:09d}"
                data, ext = _encoded(source, i)
                offset, size = _add(tf, key + ext, data)
                label = int(source.labels[i])
                if label >= 0:
                    _add(tf, key + ".cls", str(label).encode())
                members.append([key + ext, offset, size, label, names[i]])
        shards.append({"file": path.name, "members": members})
    index = {"format": FORMAT, "classes": source.classes, "origin": source.origin, "shards": shards}
    (out / INDEX).write_text(json.dumps(index))
    return out / INDEX


def is_shard_set(source: str) -> bool:
    """Whether ``source`` names a shard set: a folder with an index, or shard files by glob or
    brace list."""
    p = Path(source).expanduser()
    if p.is_dir():
        return (p / INDEX).is_file()
    return source.endswith(".tar") and any(c in source for c in "*?[{")


def _expand(spec: str) -> list[Path]:
    """Shard paths from a glob or a WebDataset brace list (``shard-{000000..000009}.tar``)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        paths = [
            Path(spec[: m.start()] + str(n).zfill(width) + spec[m.end() :]).expanduser()
            for n in range(int(lo), int(hi) + 1)
        ]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"shards not found: {', '.join(missing[:3])}")
        return paths
    paths = [Path(p) for p in sorted(glob.glob(str(Path(spec).expanduser())))]
    if not paths:
        raise DataError(f"no shard matches {spec}")
    return paths


def _scan(path: Path) -> list[list[Any]]:
    """The members of one shard without an index (headers only: nothing is decompressed)."""
    by_key: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                entry = by_key.setdefault(key, {})
                if is_image(m.name):
                    entry["image"] = [m.name, m.offset_data, m.size]
                elif ext == "cls":
                    f = tf.extractfile(m)
                    entry["label"] = int(f.read().decode().strip()) if f else -1
    except (tarfile.TarError, EOFError, ValueError) as err:
        raise DataError(f"shard {path} is damaged ({err}): copy or pack it again") from err
    out = []
    for key in sorted(by_key):
        e = by_key[key]
        if "image" in e:
            out.append([*e["image"], e.get("label", -1), e["image"][0]])
    return out


def _check_complete(path: Path, members: list[list[Any]]) -> None:
    """Refuse a shard that is missing or shorter than its index says (a copy cut short), at
    open rather than image by image while training."""
    if not path.is_file():
        raise DataError(f"shard {path} is missing (listed in its index.json): copy it again")
    end = max((int(m[1]) + int(m[2]) for m in members), default=0)
    size = path.stat().st_size
    if size < end:
        raise DataError(
            f"shard {path} is truncated ({size} bytes; its index needs {end}): copy or pack it "
            "again"
        )


def shard_source(source: str) -> ImageSource:
    """The images of a shard set (see ``is_shard_set``), read lazily by offset."""
    p = Path(source).expanduser()
    classes: list[str] = []
    entries: list[tuple[Path, list[Any]]] = []
    if p.is_dir():
        try:
            index = json.loads((p / INDEX).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{p / INDEX} cannot be read ({e}): pack the shards again") from e
        if index.get("format") != FORMAT:
            raise DataError(f"{p / INDEX} is not a swav shard index ({index.get('format')})")
        classes = list(index.get("classes", []))
        for shard in index["shards"]:
            _check_complete(p / shard["file"], shard["members"])
            entries += [(p / shard["file"], m) for m in shard["members"]]
    else:
        for path in _expand(source):
            entries += [(path, m) for m in _scan(path)]
    if not entries:
        raise DataError(f"no images in the shards of {source}")
    labels = [int(m[3]) for _, m in entries]
    if not classes and all(lab >= 0 for lab in labels):
        classes = [str(c) for c in range(max(labels) + 1)]
    if not classes:
        labels = [-1] * len(labels)
    items = [(str(path), int(m[1]), int(m[2])) for path, m in entries]
    return ImageSource(items, labels, classes, str(source), [str(m[4]) for _, m in entries])
