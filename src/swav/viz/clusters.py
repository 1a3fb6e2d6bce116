"""The clusters SwAV learned: for each prototype, the images that score highest on it, how many
images it takes (its size: the images whose highest-scoring prototype it is), and with labels
its majority class and purity; the usage of every prototype; one folder of images per
prototype."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swav.data.images import ImageSource, load_rgb
from swav.errors import UsageError
from swav.viz.images import pyplot, save_figure, thumbnail


@dataclass
class PrototypeGroup:
    """One prototype: its id, size, the indices of its top-scoring images (best first) with
    their scores, and its majority class and purity when there are labels."""

    prototype: int
    size: int
    top: list[int]
    top_scores: list[float]
    majority: str | None = None
    purity: float | None = None
    members: list[int] = field(default_factory=list)
    """The images assigned to it (highest-scoring prototype), in source order."""

    def caption(self) -> str:
        text = f"prototype {self.prototype} · {self.size} images"
        if self.majority is not None and self.purity is not None:
            text += f" · mostly '{self.majority}' ({100 * self.purity:.0f}%)"
        return text


def prototype_groups(
    scores: torch.Tensor,
    source: ImageSource,
    top: int = 8,
    prototypes: Sequence[int] | None = None,
    count: int = 8,
) -> list[PrototypeGroup]:
    """The ``count`` most used prototypes (or the ``prototypes`` asked for), each with the
    ``top`` images of ``source`` that score highest on it."""
    k = scores.shape[1]
    assigned = scores.argmax(1)
    sizes = torch.bincount(assigned, minlength=k)
    if prototypes:
        bad = [p for p in prototypes if not 0 <= p < k]
        if bad:
            raise UsageError(f"prototypes {bad} do not exist: this model has {k} (0 to {k - 1})")
        chosen = list(prototypes)
    else:
        order = torch.argsort(sizes, descending=True, stable=True)
        chosen = [int(p) for p in order[:count] if sizes[p] > 0]
    groups = []
    for p in chosen:
        best = torch.argsort(scores[:, p], descending=True, stable=True)[:top]
        members = torch.nonzero(assigned == p).flatten().tolist()
        g = PrototypeGroup(
            p, int(sizes[p]), best.tolist(), scores[best, p].tolist(), members=members
        )
        if source.labelled and members:
            cls, n = Counter(source.labels[i] for i in members).most_common(1)[0]
            g.majority, g.purity = source.classes[cls], n / len(members)
        groups.append(g)
    return groups


def draw_gallery(
    groups: list[PrototypeGroup], source: ImageSource, out: str | Path, thumb: int = 80
) -> Path:
    """One row per prototype: its caption, then its top images with their scores."""
    if not groups:
        raise UsageError("no prototype to draw: no image was assigned to any")
    plt = pyplot()
    cols = max(len(g.top) for g in groups)
    cell = thumb / 72  # inches at 72 px per inch of the thumbnail
    fig, axes = plt.subplots(
        len(groups),
        cols,
        figsize=(max(6.0, cols * cell * 1.15), len(groups) * (cell * 1.15 + 0.35)),
        squeeze=False,
    )
    for row, g in zip(axes, groups):
        for j, ax in enumerate(row):
            ax.axis("off")
            if j >= len(g.top):
                continue
            i = g.top[j]
            ax.imshow(thumbnail(source, i, thumb * 2), interpolation="bilinear")
            ax.set_title(f"{g.top_scores[j]:.2f}", fontsize=7, pad=2)
            if source.labelled:
                ax.text(
                    0.5,
                    -0.08,
                    source.classes[source.labels[i]],
                    fontsize=6,
                    ha="center",
                    va="top",
                    transform=ax.transAxes,
                )
        row[0].text(
            0.0,
            1.35,
            g.caption(),
            fontsize=9,
            fontweight="bold",
            transform=row[0].transAxes,
            ha="left",
            va="bottom",
        )
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(top=1 - 0.9 / height, hspace=0.75, wspace=0.05)
    fig.suptitle(
        "Images that score highest on the most used prototypes (score above each)",
        fontsize=11,
        y=1 - 0.15 / height,
    )
    return save_figure(fig, out)


def draw_usage(scores: torch.Tensor, out: str | Path) -> Path:
    """Prototype usage: the number of images per prototype, largest first (with the share of
    prototypes that take no image)."""
    plt = pyplot()
    k = scores.shape[1]
    sizes = torch.bincount(scores.argmax(1), minlength=k).sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(np.arange(k), sizes, width=1.0, color="#4477aa")
    ax.axhline(len(scores) / k, color="gray", ls="--", lw=1, label="equal partition")
    used = int((sizes > 0).sum())
    ax.set_title(f"Prototype usage: {used} of {k} prototypes take at least one image")
    ax.set_xlabel("prototypes, by number of images")
    ax.set_ylabel("images")
    ax.legend()
    return save_figure(fig, out)


def export_clusters(
    groups: list[PrototypeGroup], source: ImageSource, folder: str | Path, copy: bool = False
) -> list[Path]:
    """One folder per prototype (``prototype_0017``) holding its images: links to the files
    (copies with ``copy``, or for images inside an archive or a dataset, written as PNG)."""
    folder = Path(folder)
    made = []
    for g in groups:
        d = folder / f"prototype_{g.prototype:04d}"
        d.mkdir(parents=True, exist_ok=True)
        names = source.item_names()
        for i in g.members:
            item = source.items[i]
            if isinstance(item, str) and Path(item).is_file():
                dst = d / Path(item).name
                if dst.exists() or dst.is_symlink():
                    dst = d / f"{i}_{Path(item).name}"
                if copy:
                    shutil.copy2(item, dst)
                else:
                    os.symlink(os.path.abspath(item), dst)
            else:
                stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(names[i]).stem).strip("_")
                dst = d / f"{stem}_{i}.png"
                load_rgb(source[i][0]).save(dst)
        made.append(d)
    return made


def gallery_listing(groups: list[PrototypeGroup], source: ImageSource) -> list[dict]:
    """What the gallery shows, as data: per prototype its size, majority class, purity and top
    images (name and score)."""
    names = source.item_names()
    return [
        {
            "prototype": g.prototype,
            "size": g.size,
            "majority": g.majority,
            "purity": g.purity,
            "top": [{"image": names[i], "score": s} for i, s in zip(g.top, g.top_scores)],
        }
        for g in groups
    ]
