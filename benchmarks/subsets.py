"""Datasets derived from ``../shared/data`` for the quality benchmark's tune and validation sets,
written as ImageFolder trees outside the repository (never committed):

- ``cifar10-animals``: CIFAR-10's bird, cat, deer, dog, frog and horse (30,000 train / 6,000
  test), a hard, fine-grained-like set of small photos;
- ``cifar10-vehicles``: airplane, automobile, ship and truck (20,000 / 4,000);
- ``imagenette-32`` / ``imagenette-64``: Imagenette's 96 px images resized to 32 / 64 px
  (9,469 train / 3,925 val);
- ``imagenette-96``: the archive's images as they are, as a folder.

    python benchmarks/subsets.py --out ~/data            # all of them
    python benchmarks/subsets.py --out ~/data --only cifar10-animals
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")


def _members(archive: Path):
    """(split, class, file name, bytes) of every image of an ``<root>/<split>/<class>/x`` tar."""
    with tarfile.open(archive) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4:
                continue
            f = tf.extractfile(m)
            if f is not None:
                yield parts[1], parts[2], parts[3], f.read()


def class_subset(archive: Path, out: Path, classes: tuple[str, ...] | None) -> int:
    """The images of ``classes`` (None: all), written unchanged."""
    n = 0
    for split, cls, name, data in _members(archive):
        if classes is None or cls in classes:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            (out / split / cls / name).write_bytes(data)
            n += 1
    return n


def resized(archive: Path, out: Path, size: int) -> int:
    n = 0
    for split, cls, name, data in _members(archive):
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
        (out / split / cls).mkdir(parents=True, exist_ok=True)
        img.save(out / split / cls / name, quality=90)
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the datasets into")
    p.add_argument("--only", nargs="*", default=None, help="names of the datasets to write")
    args = p.parse_args()
    root = Path(args.out).expanduser()
    cifar, nette = SHARED / "cifar10-jpg.tar.gz", SHARED / "imagenette-96.tar.gz"
    jobs = {
        "cifar10-animals": lambda d: class_subset(cifar, d, ANIMALS),
        "cifar10-vehicles": lambda d: class_subset(cifar, d, VEHICLES),
        "imagenette-32": lambda d: resized(nette, d, 32),
        "imagenette-64": lambda d: resized(nette, d, 64),
        "imagenette-96": lambda d: class_subset(nette, d, None),
    }
    for name, make in jobs.items():
        if args.only and name not in args.only:
            continue
        target = root / name
        if target.exists():
            print(f"{target} exists: kept")
            continue
        print(f"{target}: {make(target)} images")


if __name__ == "__main__":
    main()
