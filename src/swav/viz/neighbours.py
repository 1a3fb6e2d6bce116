"""Nearest neighbours: each query image beside the images of the data whose backbone features
are closest to it (cosine similarity)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from swav.data.images import ImageSource
from swav.errors import UsageError
from swav.viz.images import pyplot, save_figure, short_name, thumbnail


@dataclass
class Neighbours:
    """For each query: the indices of its nearest images in the data and their similarities."""

    indices: torch.Tensor
    similarities: torch.Tensor


def nearest(queries: torch.Tensor, features: torch.Tensor, k: int = 8) -> Neighbours:
    """The ``k`` data rows with the highest cosine similarity to each query row."""
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    k = min(k, features.shape[0])
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(features.float(), dim=1).T
    top = sim.topk(k, dim=1)
    return Neighbours(top.indices, top.values)


def draw_neighbours(
    query_paths: list[str],
    found: Neighbours,
    source: ImageSource,
    out: str | Path,
    thumb: int = 80,
) -> Path:
    """One row per query: the query, then its neighbours with their similarity (and class)."""
    plt = pyplot()
    k = found.indices.shape[1]
    cell = thumb / 72
    fig, axes = plt.subplots(
        len(query_paths),
        k + 1,
        figsize=((k + 1) * cell * 1.2, len(query_paths) * cell * 1.45),
        squeeze=False,
    )
    query_source = ImageSource(list(query_paths), [-1] * len(query_paths), [], "queries")
    for r, row in enumerate(axes):
        for ax in row:
            ax.axis("off")
        row[0].imshow(thumbnail(query_source, r, thumb * 2))
        row[0].set_title("query\n" + Path(query_paths[r]).name[-18:], fontsize=7, color="#aa3377")
        for j in range(k):
            i = int(found.indices[r, j])
            row[j + 1].imshow(thumbnail(source, i, thumb * 2))
            label = source.classes[source.labels[i]] if source.labelled else short_name(source, i)
            row[j + 1].set_title(f"{float(found.similarities[r, j]):.2f}\n{label}", fontsize=7)
    fig.suptitle("Nearest images by backbone features (cosine similarity)", fontsize=11)
    return save_figure(fig, out)
