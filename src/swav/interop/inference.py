"""Inference with a trained model: embed images, classify them, assign them to prototypes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from swav.data.images import DataError, ImageSource, load_rgb
from swav.data.transforms import EvalTransform
from swav.engine.checkpoint import atomic_write
from swav.engine.run_dir import check_writable
from swav.errors import UsageError
from swav.interop.checkpoints import CheckpointError
from swav.interop.heads import LinearHead
from swav.model.features import extract_features
from swav.model.swav import SwAV

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """One row of features per readable image, with its name and label (-1: none)."""

    features: np.ndarray
    names: list[str]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)
    """The images that could not be read (no row)."""


def embed(
    model: nn.Module,
    source: ImageSource,
    transform: EvalTransform,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Embeddings:
    """Backbone features in the source's (sorted, deterministic) order, with names. Images
    that cannot be read get no row: they are left out, named in ``skipped`` and logged."""
    f = extract_features(
        model, source, transform, batch_size, workers, device, with_scores=False, progress=progress
    )
    names = source.item_names()
    ok = f.ok.tolist() if f.ok is not None else [True] * len(names)
    skipped = [n for n, good in zip(names, ok) if not good]
    if len(skipped) == len(names):
        raise DataError(f"none of the {len(names)} images could be read: nothing to embed")
    if skipped:
        log.warning(
            "%d of %d images could not be read and have no row: %s%s",
            len(skipped),
            len(names),
            ", ".join(skipped[:5]),
            " ..." if len(skipped) > 5 else "",
        )
    v = f.valid()
    kept = [n for n, good in zip(names, ok) if good]
    return Embeddings(v.features.numpy(), kept, v.labels.numpy(), skipped)


def embedding_path(out: str | Path, force: bool = False) -> Path:
    """``out`` checked as an embeddings file: a .npy or .parquet name, not an existing file
    unless ``force``."""
    path = Path(out)
    if path.suffix not in (".npy", ".parquet"):
        raise UsageError(f"{path}: embeddings are written as .npy or .parquet; name the file so")
    return check_writable(path, force)


def save_embeddings(emb: Embeddings, out: str | Path, force: bool = False) -> list[Path]:
    """``.npy`` (features, plus ``<out>.names.txt``) or ``.parquet`` (name, label, feature).
    An existing file is replaced only with ``force``."""
    out = embedding_path(out, force)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "name": emb.names,
                "label": emb.labels.tolist(),
                "feature": [row.tolist() for row in emb.features],
            }
        )
        atomic_write(out, lambda f: pq.write_table(table, f))
        return [out]
    atomic_write(out, lambda f: np.save(f, emb.features))
    names = out.with_name(out.stem + ".names.txt")
    text = ("\n".join(emb.names) + "\n").encode()
    atomic_write(names, lambda f: f.write(text))
    return [out, names]


def read_image(path: str | Path) -> tuple[Image.Image | None, str | None]:
    """The image at ``path`` in RGB, or None and why it cannot be used (a short reason)."""
    path = Path(path)
    if path.is_dir():
        return None, "a folder, not an image; for a folder use `swav embed`"
    if not path.exists():
        return None, "no such file"
    if path.stat().st_size == 0:
        return None, "empty file"
    try:
        return load_rgb(path), None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise all three
        return None, str(e).replace(str(path), "").strip(" :'\"") or type(e).__name__


def unreadable_error(bad: list[str], total: int) -> DataError:
    """One error naming the images that could not be read."""
    return DataError(f"{len(bad)} of {total} images could not be read: " + "; ".join(bad))


def image_batches(
    paths: list[str], transform: EvalTransform, bad: list[str], batch_size: int = 64
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """The readable images among ``paths``, in order, transformed and stacked in batches of at
    most ``batch_size`` with their paths; each is decoded once, and at most one batch is held.
    Each unreadable one is appended to ``bad`` as 'path (reason)'."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    for p in paths:
        img, reason = read_image(p)
        if img is None:
            bad.append(f"{p} ({reason})")
            continue
        names.append(p)
        tensors.append(transform(img))
        if len(tensors) == batch_size:
            yield names, torch.stack(tensors)
            names, tensors = [], []
    if tensors:
        yield names, torch.stack(tensors)


def _images(paths: list[str], transform: EvalTransform) -> torch.Tensor:
    """All of ``paths`` transformed, in one batch; refused when any cannot be read."""
    bad: list[str] = []
    batches = [x for _, x in image_batches(paths, transform, bad)]
    if bad:
        raise unreadable_error(bad, len(paths))
    if not batches:
        raise UsageError("no images given")
    return torch.cat(batches)


def predict(
    model: SwAV,
    classifier: LinearHead,
    paths: list[str],
    transform: EvalTransform,
    classes: list[str] | None = None,
    topk: int = 1,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image, from backbone features and a linear head."""
    classifier.check(model)  # a head of another width is refused before any image is read
    return classify(model, classifier, _images(paths, transform), classes, topk)


@torch.no_grad()
def classify(
    model: SwAV,
    classifier: LinearHead,
    images: torch.Tensor,
    classes: list[str] | None = None,
    topk: int = 1,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each of a batch of transformed images."""
    model.eval()
    classifier.eval().check(model)
    probs = torch.softmax(classifier.classify(model, images), dim=1)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    out = []
    for row_p, row_i in zip(p.tolist(), idx.tolist()):
        out.append([(classes[i] if classes else str(i), pr) for i, pr in zip(row_i, row_p)])
    return out


def assign(model: SwAV, paths: list[str], transform: EvalTransform) -> list[tuple[int, float]]:
    """(prototype id, cosine score) of each image's highest-scoring prototype (first head)."""
    require_prototypes(model)
    return nearest_prototype(model, _images(paths, transform))


def require_prototypes(model: SwAV) -> None:
    """Refuse a model without prototypes (before any image is read)."""
    if getattr(model, "prototypes", None) is None:
        raise CheckpointError("this model has no prototypes (a backbone-only checkpoint)")


@torch.no_grad()
def nearest_prototype(model: SwAV, images: torch.Tensor) -> list[tuple[int, float]]:
    """(prototype id, cosine score) of each of a batch of transformed images (first head)."""
    require_prototypes(model)
    out = model.eval()(images)
    score, idx = out.scores[0].max(dim=1)
    return list(zip(idx.tolist(), score.tolist()))
