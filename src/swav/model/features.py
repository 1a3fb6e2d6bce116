"""Features of a frozen network over a dataset: batched, deterministic, cached.

Used by evaluation (kNN, linear probes, clustering) and by inference (embedding images), so it
sits with the model, below both.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from swav.data.images import ImageSource, load_rgb
from swav.errors import UsageError

log = logging.getLogger(__name__)

Transform = Callable[[Any], Tensor]


class ImageDataset(Dataset):
    """``(image tensor, label, index, readable)`` per item of a source, through ``transform``.

    An unreadable image gives a zero image with ``readable = False``, so that a batch keeps its
    shape and the caller can drop (and count) it.
    """

    def __init__(self, source: ImageSource, transform: Transform, size: int) -> None:
        self.source, self.transform, self.size = source, transform, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, bool]:
        item, label = self.source[i]
        try:
            return self.transform(load_rgb(item)), label, i, True
        except Exception:  # unreadable: a zero image, flagged so callers can drop it
            return torch.zeros(3, self.size, self.size), label, i, False


@dataclass
class Features:
    """Backbone features (N x D), prototype scores (N x K, or None), labels and readable flags."""

    features: Tensor
    labels: Tensor
    scores: Tensor | None = None
    ok: Tensor | None = None

    def valid(self) -> Features:
        """Only the rows of readable images."""
        if self.ok is None or bool(self.ok.all()):
            return self
        m = self.ok
        return Features(
            self.features[m], self.labels[m], None if self.scores is None else self.scores[m], m[m]
        )


def image_loader(
    source: ImageSource,
    transform: Transform,
    size: int,
    batch_size: int = 256,
    workers: int = 0,
) -> DataLoader:
    """Batches of ``ImageDataset(source, transform)`` in the source's order."""
    return DataLoader(
        ImageDataset(source, transform, size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )


def _cache_file(
    cache_dir: str | Path | None, cache_key: str | None, source: ImageSource, key: str
) -> Path | None:
    if not (cache_dir and cache_key):
        return None
    h = hashlib.sha256(f"{cache_key}|{source.origin}|{len(source)}|{key}".encode()).hexdigest()
    return Path(cache_dir) / f"features-{h[:20]}.pt"


def _convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: ImageSource,
    transform: Any,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device = "cpu",
    with_scores: bool = True,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
) -> Features:
    """Pooled backbone features (and prototype scores when the model has prototypes).

    ``transform`` is an ``EvalTransform`` (anything with ``size``, ``key()`` and a call). With
    ``cache_dir`` and ``cache_key`` (e.g. the checkpoint's path, size and time), results are
    stored in a ``.pt`` file keyed by checkpoint + dataset + transform and reused.
    """
    cache = _cache_file(cache_dir, cache_key, source, transform.key())
    if cache is not None and cache.exists():
        d = torch.load(cache, weights_only=True)
        return Features(d["features"], d["labels"], d.get("scores"), d.get("ok"))
    net: Any = model.to(device).eval()
    fmt = torch.channels_last if _convolutional(net) else torch.contiguous_format
    net = net.to(memory_format=fmt)  # NHWC: 1.5-2x faster convolutions on a CPU
    feats, scores, labels, oks = [], [], [], []
    batches: Any = image_loader(source, transform, transform.size, batch_size, workers)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    for x, y, _, ok in batches:
        x = x.to(device, memory_format=fmt)
        f = net.forward_backbone(x) if hasattr(net, "forward_backbone") else net(x)
        if with_scores and getattr(net, "prototypes", None) is not None:
            scores.append(net.forward_head(f).scores[0].float().cpu())
        feats.append(f.float().cpu())
        labels.append(y)
        oks.append(ok)
    out = Features(
        torch.cat(feats), torch.cat(labels), torch.cat(scores) if scores else None, torch.cat(oks)
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"features": out.features, "labels": out.labels, "scores": out.scores, "ok": out.ok},
            cache,
        )
    return out


@torch.no_grad()
def extract_stage_features(
    model: nn.Module,
    source: ImageSource,
    transform: Any,
    pool: int = 2,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> list[Tensor]:
    """Per-stage features (stem, stage 1-4) of a ResNet trunk, average-pooled to pool x pool."""
    trunk: Any = getattr(model, "backbone", model).to(device).eval()
    if not hasattr(trunk, "forward_stages"):
        raise UsageError("per-stage features need a ResNet backbone")
    outs: list[list[Tensor]] = [[] for _ in range(5)]
    for x, _, _, _ in image_loader(source, transform, transform.size, batch_size):
        for i, m in enumerate(trunk.forward_stages(x.to(device))):
            outs[i].append(F.adaptive_avg_pool2d(m, pool).flatten(1).float().cpu())
    return [torch.cat(o) for o in outs]
