"""Inference with a trained model: embed images, classify them, assign them to prototypes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from swav.data.sources import DataError, ImageSource, load_rgb
from swav.data.transforms import EvalTransform
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
    out.parent.mkdir(parents=True, exist_ok=True)
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
        pq.write_table(table, out)
        return [out]
    np.save(out, emb.features)
    names = out.with_name(out.stem + ".names.txt")
    names.write_text("\n".join(emb.names) + "\n")
    return [out, names]


def unreadable_image(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image (a short reason), or None when it decodes."""
    path = Path(path)
    if path.is_dir():
        return "a folder, not an image; for a folder use `swav embed`"
    if not path.exists():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        load_rgb(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise all three
        return str(e).replace(str(path), "").strip(" :'\"") or type(e).__name__
    return None


def split_readable(paths: list[str]) -> tuple[list[str], list[str]]:
    """``paths`` split into those that decode as images and one 'path (reason)' per other."""
    good, bad = [], []
    for p in paths:
        reason = unreadable_image(p)
        if reason is None:
            good.append(p)
        else:
            bad.append(f"{p} ({reason})")
    return good, bad


def unreadable_error(bad: list[str], total: int) -> DataError:
    """One error naming the images that could not be read."""
    return DataError(f"{len(bad)} of {total} images could not be read: " + "; ".join(bad))


def _images(paths: list[str], transform: EvalTransform) -> torch.Tensor:
    good, bad = split_readable(paths)
    if bad:
        raise unreadable_error(bad, len(paths))
    return torch.stack([transform(load_rgb(p)) for p in good])


@torch.no_grad()
def predict(
    model: SwAV,
    classifier: LinearHead,
    paths: list[str],
    transform: EvalTransform,
    classes: list[str] | None = None,
    topk: int = 1,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image, from backbone features and a linear head."""
    model.eval()
    classifier.eval().check(model)  # a head of another width is refused before any image is read
    probs = torch.softmax(classifier.classify(model, _images(paths, transform)), dim=1)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    out = []
    for row_p, row_i in zip(p.tolist(), idx.tolist()):
        out.append([(classes[i] if classes else str(i), pr) for i, pr in zip(row_i, row_p)])
    return out


@torch.no_grad()
def assign(model: SwAV, paths: list[str], transform: EvalTransform) -> list[tuple[int, float]]:
    """(prototype id, cosine score) of each image's highest-scoring prototype (first head)."""
    model.eval()
    if getattr(model, "prototypes", None) is None:
        raise CheckpointError("this model has no prototypes (a backbone-only checkpoint)")
    out = model(_images(paths, transform))
    score, idx = out.scores[0].max(dim=1)
    return list(zip(idx.tolist(), score.tolist()))
