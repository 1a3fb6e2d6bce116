"""A 2-D map of the features: UMAP when the optional ``umap-learn`` package is installed, else
t-SNE from scikit-learn; coloured by class when there are labels, else by prototype, or drawn
with the images themselves."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swav.data.images import ImageSource
from swav.errors import UsageError
from swav.viz.images import pyplot, save_figure, thumbnail

log = logging.getLogger(__name__)

METHODS = ("auto", "umap", "tsne")


def project_2d(
    features: torch.Tensor, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, str]:
    """(N x 2 coordinates, the method used) of L2-normalised ``features``."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if len(x) < 5:
        raise UsageError(f"a map needs at least 5 images, got {len(x)}")
    if method in ("auto", "umap"):
        try:
            import umap

            log.info("UMAP of %d images ...", len(x))
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed)
            return np.asarray(reducer.fit_transform(x)), "UMAP"
        except ImportError:
            if method == "umap":
                raise UsageError("UMAP needs the umap extra: pip install 'swav[umap]'") from None
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    log.info("t-SNE of %d images (perplexity %.0f) ...", len(x), perplexity)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    t0 = time.perf_counter()
    xy = np.asarray(tsne.fit_transform(x))
    log.info("t-SNE done in %.0f s", time.perf_counter() - t0)
    return xy, "t-SNE"


def draw_embedding(
    xy: np.ndarray,
    method: str,
    source: ImageSource,
    out: str | Path,
    prototypes: np.ndarray | None = None,
    thumbnails: bool = False,
    max_thumbnails: int = 400,
) -> Path:
    """The map: one dot per image coloured by class (or by prototype), or thumbnails."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    if source.labelled:
        colours, legend = np.asarray(source.labels), source.classes
        what = "class"
    elif prototypes is not None:
        colours, legend, what = prototypes, None, "prototype"
    else:
        colours, legend, what = np.zeros(len(xy), dtype=int), None, "image"
    if thumbnails:
        _draw_thumbnails(ax, xy, source, max_thumbnails)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab20", s=8, alpha=0.8)
        if legend and len(legend) <= 20:
            handles = [
                plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=name)
                for i, name in enumerate(legend)
            ]
            ax.legend(handles=handles, loc="best", fontsize=7, markerscale=1.2)
    ax.set_title(f"{method} map of the backbone features of {len(xy)} images, by {what}")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, out)


def _draw_thumbnails(ax: Any, xy: np.ndarray, source: ImageSource, limit: int) -> None:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    rng = np.random.default_rng(0)
    shown = rng.permutation(len(xy))[:limit]
    ax.scatter(xy[:, 0], xy[:, 1], s=2, color="lightgray")
    for i in shown:
        box = OffsetImage(thumbnail(source, int(i), 32), zoom=0.7)
        ax.add_artist(AnnotationBbox(box, xy[i], frameon=False))
