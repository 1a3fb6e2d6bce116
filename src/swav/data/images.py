"""What every image source is made of: the image types read, the error for unusable data,
the decoder every loader uses (``load_rgb``) and the source type itself (``ImageSource``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile

from swav.errors import SwAVError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, counted and skipped


class DataError(SwAVError, ValueError):
    """The data cannot be used as given; the message names the path and what to change."""


def load_rgb(item: Any) -> Image.Image:
    """Decode a path, bytes or image into an 8-bit RGB PIL image.

    16-bit and 32-bit greyscale are rescaled to 0-255 (PIL's own conversion would clip them);
    transparent images are composited on white; CMYK, palette and greyscale become RGB.
    """
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        img = Image.fromarray(item)
    else:
        src = io.BytesIO(item) if isinstance(item, bytes | bytearray) else item
        img = Image.open(src)
        img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode in ("I", "F") and arr.max() <= 255 and arr.min() >= 0:
            hi = 255.0
        arr = np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass
class ImageSource(torch.utils.data.Dataset):
    """A list of undecoded items with labels and class names."""

    items: Sequence[Any]
    labels: Sequence[int] | np.ndarray
    classes: list[str]
    origin: str
    names: Sequence[str] | None = None
    """A readable name per item (relative path or archive member), when there is one."""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.items[index]
        if isinstance(item, tuple):  # (tar path, offset, size): read lazily
            path, offset, size = item
            with open(path, "rb") as f:
                f.seek(offset)
                item = f.read(size)
        return item, int(self.labels[index])

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def subset(self, indices: Sequence[int]) -> ImageSource:
        return ImageSource(
            [self.items[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
            self.origin,
            [self.names[i] for i in indices] if self.names else None,
        )

    def item_names(self) -> Sequence[str]:
        return self.names or [f"{self.origin}#{i}" for i in range(len(self))]


def is_image(name: str) -> bool:
    """Whether a file name has an image extension."""
    return name.lower().endswith(IMAGE_EXTENSIONS)
