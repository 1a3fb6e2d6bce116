"""Features of a frozen backbone for a labelled dataset: batched, deterministic, cached."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from swav.data.multicrop import to_uint8_tensor
from swav.data.sources import ImageSource, load_rgb

log = logging.getLogger(__name__)


class EvalTransform:
    """Resize the shorter side to ``size / crop_fraction``, centre-crop ``size``, normalise.

    ``crop_fraction=0.875`` is the usual Resize(256) + CenterCrop(224); use 1.0 for small images
    (CIFAR, digits), which are simply resized to ``size``.
    """

    def __init__(self, size: int, mean, std, crop_fraction: float = 0.875) -> None:
        self.size, self.crop_fraction = size, crop_fraction
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def key(self) -> str:
        return (
            f"eval{self.size}-{self.crop_fraction}-{self.mean.flatten().tolist()}-"
            f"{self.std.flatten().tolist()}"
        )

    def __call__(self, img) -> Tensor:
        t = to_uint8_tensor(img)
        resize = int(round(self.size / self.crop_fraction))
        t = TF.resize(
            t, [resize] if self.crop_fraction < 1 else [self.size, self.size], antialias=True
        )
        if self.crop_fraction < 1:
            t = TF.center_crop(t, [self.size, self.size])
        return (t.float() / 255.0 - self.mean) / self.std


class TrainTransform:
    """RandomResizedCrop(size) + horizontal flip + normalise: the supervised protocols' training
    augmentation (linear evaluation, semi-supervised fine-tuning)."""

    def __init__(self, size: int, mean, std) -> None:
        from torchvision.transforms import v2 as T

        self.size = size
        self._tf = T.Compose(
            [
                T.RandomResizedCrop(size, antialias=True),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(list(mean), list(std)),
            ]
        )

    def __call__(self, img) -> Tensor:
        return self._tf(to_uint8_tensor(img))


class _Images(Dataset):
    def __init__(self, source: ImageSource, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        item, label = self.source[i]
        try:
            return self.transform(load_rgb(item)), label, i, True
        except Exception:  # unreadable: a zero image, flagged so callers can drop it
            return torch.zeros(3, self.transform.size, self.transform.size), label, i, False


@dataclass
class Features:
    """Backbone features (N x D), prototype scores (N x K, or None), labels and readable flags."""

    features: Tensor
    labels: Tensor
    scores: Tensor | None = None
    ok: Tensor | None = None

    def valid(self) -> Features:
        if self.ok is None or bool(self.ok.all()):
            return self
        m = self.ok
        return Features(
            self.features[m], self.labels[m], None if self.scores is None else self.scores[m], m[m]
        )


def loader_for(source: ImageSource, transform, batch_size: int = 256, workers: int = 0):
    return DataLoader(
        _Images(source, transform), batch_size=batch_size, shuffle=False, num_workers=workers
    )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: ImageSource,
    transform: EvalTransform,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device = "cpu",
    with_scores: bool = True,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
) -> Features:
    """Pooled backbone features (and prototype scores when the model has prototypes).

    With ``cache_dir`` and ``cache_key`` (e.g. the checkpoint's hash), results are stored in a
    ``.pt`` file keyed by checkpoint + dataset + transform and reused.
    """
    cache = None
    if cache_dir and cache_key:
        h = hashlib.sha256(
            f"{cache_key}|{source.origin}|{len(source)}|{transform.key()}".encode()
        ).hexdigest()[:20]
        cache = Path(cache_dir) / f"features-{h}.pt"
        if cache.exists():
            d = torch.load(cache, weights_only=True)
            return Features(d["features"], d["labels"], d.get("scores"), d.get("ok"))
    model = model.to(device).eval()
    feats, scores, labels, oks = [], [], [], []
    it = loader_for(source, transform, batch_size, workers)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="features", unit="batch")
    for x, y, _, ok in it:
        x = x.to(device)
        f = model.forward_backbone(x) if hasattr(model, "forward_backbone") else model(x)
        if with_scores and getattr(model, "prototypes", None) is not None:
            scores.append(model.forward_head(f).scores[0].float().cpu())
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
    transform: EvalTransform,
    pool: int = 2,
    batch_size: int = 128,
    device="cpu",
) -> list[Tensor]:
    """Per-stage features (stem, stage 1-4) of a ResNet trunk, average-pooled to pool x pool."""
    trunk = getattr(model, "backbone", model).to(device).eval()
    if not hasattr(trunk, "forward_stages"):
        raise ValueError("per-stage features need a ResNet backbone")
    outs: list[list[Tensor]] = [[] for _ in range(5)]
    for x, _, _, _ in loader_for(source, transform, batch_size):
        for i, m in enumerate(trunk.forward_stages(x.to(device))):
            outs[i].append(F.adaptive_avg_pool2d(m, pool).flatten(1).float().cpu())
    return [torch.cat(o) for o in outs]
