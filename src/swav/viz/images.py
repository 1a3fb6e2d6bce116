"""Figure basics shared by every picture: readable defaults, thumbnails that keep their aspect,
and writing a figure to a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from swav.data.images import ImageSource, load_rgb
from swav.engine.checkpoint import atomic_write

STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, with the project's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params: Any = plt.rcParams  # typed by key names; the style is a plain dict
    params.update(STYLE)
    return plt


def save_figure(fig: Any, out: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``out`` (a PNG; folders created) and close it."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(out, lambda f: fig.savefig(f, dpi=dpi, bbox_inches="tight", format=fmt))
    finally:
        pyplot().close(fig)
    return out


def thumbnail(source: ImageSource, index: int, size: int = 96) -> np.ndarray:
    """Image ``index`` of ``source`` as a ``size`` x ``size`` RGB array: scaled to fit and
    padded with white, never stretched (an unreadable image is a grey square)."""
    try:
        img = load_rgb(source[index][0])
    except (OSError, ValueError, SyntaxError):
        return np.full((size, size, 3), 128, dtype=np.uint8)
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    if max(img.size) < size:  # small images (digits, CIFAR) are enlarged to fill the cell
        scale = size / max(img.size)
        new = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(new, Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.size[0]) // 2, (size - img.size[1]) // 2))
    return np.asarray(canvas)


def short_name(source: ImageSource, index: int, width: int = 18) -> str:
    """A name for image ``index`` that fits under a thumbnail."""
    name = Path(source.item_names()[index]).name
    return name if len(name) <= width else "…" + name[-(width - 1) :]
