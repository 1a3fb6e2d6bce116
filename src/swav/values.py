"""Declared kinds of values, shared by the command line and the library: numbers with their
range, and text that names a file, a folder, a split or a setting.

A ``Range`` says which numbers a setting accepts (whole or real, bounds open or closed, always
finite). The same object is the ``type=`` of a command-line option (refusing ``0``, ``-1``,
``nan`` or ``1e400`` while the arguments are parsed, as one line) and the check of the
library call behind it (``Range.check``), so a value the command refuses is refused by the
function too, with the same words.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swav.errors import SwAVError, UsageError

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Range:
    """Numbers from ``lo`` to ``hi`` (None: unbounded), whole numbers when ``integer``.

    ``lo_open`` / ``hi_open`` exclude the bound itself; ``note`` explains a special value
    (``0 = all images``) in messages and help."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def describe(self) -> str:
        """``a whole number from 1 to 4096``, ``a number > 0``, ..."""
        kind = "a whole number" if self.integer else "a finite number"
        lo, hi = self._shown(self.lo), self._shown(self.hi)
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            text = f"{kind} from {lo} to {hi}"
        else:
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='} {lo}")
            if self.hi is not None:
                parts.append(f"{'<' if self.hi_open else '<='} {hi}")
            text = f"{kind} {' and '.join(parts)}" if parts else kind
        return f"{text} ({self.note})" if self.note else text

    def _shown(self, v: float | None) -> str:
        if v is None:
            return ""
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not float(value).is_integer():
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def check(self, value: Any, name: str) -> Any:
        """``value`` when it is in the range, else a ``UsageError`` naming ``name``."""
        if not self.contains(value):
            raise UsageError(f"{name}: {value!r} is not {self.describe()}")
        return int(value) if self.integer else float(value)

    def parse(self, text: str) -> int | float:
        """The number written in ``text``; ``ValueError`` saying what is allowed."""
        text = text.strip()
        try:
            value: int | float = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {self.describe()}") from None
        if not self.contains(value):
            raise ValueError(f"{text!r} is not {self.describe()}")
        return value

    def __call__(self, text: str) -> int | float:
        """The argparse ``type``: a refused value becomes the parser's one-line error."""
        try:
            return self.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


class Kind:
    """The base of the non-numeric kinds: the argparse ``type`` of an option."""

    what = "value"

    def convert(self, text: str) -> str:
        return text

    def __call__(self, text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty {self.what}")
        try:
            return self.convert(text)
        except SwAVError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


@dataclass(frozen=True)
class Reference(Kind):
    """A name or a path that the command resolves (a checkpoint, a dataset, a preset, an
    image): refused here only when empty; the command names what it could not find."""

    what: str = "name or path"


@dataclass(frozen=True)
class InputFile(Kind):
    """A file to read, which must exist."""

    what: str = "file"

    def convert(self, text: str) -> str:
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a {self.what}")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text}: no such {self.what}")
        return text


@dataclass(frozen=True)
class InputFolder(Kind):
    """A folder to read, which must exist."""

    what: str = "folder"

    def convert(self, text: str) -> str:
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give a {self.what}")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: no such {self.what}")
        return text


@dataclass(frozen=True)
class Split(Kind):
    """The name of a split of the data (a sub-folder, a dataset's train / test), or empty for
    every image; the command refuses a name the data does not have."""

    what: str = "split name"

    def __call__(self, text: str) -> str:
        return text.strip()


@dataclass(frozen=True)
class Override(Kind):
    """A ``section.key=value`` setting, checked with the whole configuration."""

    what: str = "key=value setting"


def whole(lo: int = 1, hi: int = INT32_MAX, note: str = "") -> Range:
    """Whole numbers from ``lo`` to ``hi``."""
    return Range(lo, hi, integer=True, note=note)


def positive(hi: float | None = None, note: str = "") -> Range:
    """Finite numbers > 0 (and <= ``hi``)."""
    return Range(0, hi, lo_open=True, note=note)


def non_negative(hi: float | None = None, note: str = "") -> Range:
    """Finite numbers >= 0 (and <= ``hi``)."""
    return Range(0, hi, note=note)


# ranges several commands and functions share
BATCH = whole(1, 65536)
IMAGE_SIZE = whole(8, 8192)
LIMIT = whole(0, note="0 = every image")
SEED = whole(0, 2**32 - 1)
COUNT = whole(1, 1_000_000)
EPOCHS = whole(1, 100_000)
LEARNING_RATE = positive(1e3)


__all__ = [
    "BATCH",
    "IMAGE_SIZE",
    "LIMIT",
    "SEED",
    "COUNT",
    "EPOCHS",
    "LEARNING_RATE",
    "Range",
    "whole",
    "positive",
    "non_negative",
    "INT32_MAX",
    "Kind",
    "Reference",
    "InputFile",
    "InputFolder",
    "Split",
    "Override",
]


DEFAULT_SHOTS = (1, 2, 4, 8, 16, 32, 64, 96)
"""Examples per class of the low-shot protocol (the paper's k = 1 ... 96)."""

EXPORT_FORMATS = ("torchvision", "timm", "safetensors", "detectron2", "onnx", "swav")
"""The formats ``swav export`` writes (``swav.interop.export``)."""

IGNORABLE_PARTS = ("projection_head", "prototypes", "head", "fc", "classifier")
"""Parts of a checkpoint that ``ignore=`` (``--ignore``) may leave out."""

LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The trackers ``train.loggers`` may name -> the module each needs (``pip install
'swav[NAME]'``); ``metrics.jsonl`` is always written."""
