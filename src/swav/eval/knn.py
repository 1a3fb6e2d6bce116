"""Weighted k-nearest-neighbour classification on L2-normalised features (as in DINO and
InstDisc): the k most cosine-similar training samples vote for their class with weight
exp(sim / T). Several k are evaluated from one similarity pass; memory is bounded by chunking
the test set, so a million training features fit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from swav.errors import UsageError


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    n_classes: int | None = None,
    chunk: int = 256,
) -> dict[int, Tensor]:
    """Class scores (N_test x C) for each k. The weights are taken relative to each test
    sample's nearest neighbour (``exp((sim - max sim) / T)``): the same ranking as
    ``exp(sim / T)``, without overflow for small temperatures."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"knn temperature: {temperature!r} is not a finite number > 0")
    if not ks or min(ks) < 1:
        raise UsageError(f"knn: every k must be at least 1, got {list(ks)}")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.long()
    c = int(n_classes or int(labels.max()) + 1)
    kmax = min(max(ks), train.shape[0])
    out: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.t()
        top_sim, top_idx = sim.topk(kmax, dim=1)
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        one_hot = F.one_hot(labels[top_idx], c).float()  # n x kmax x C
        for k in ks:
            kk = min(k, kmax)
            out[k].append((one_hot[:, :kk] * weights[:, :kk, None]).sum(1))
    return {k: torch.cat(v) for k, v in out.items()}


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (in %) for each k."""
    n_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    scores = knn_predict(train_features, train_labels, test_features, ks, temperature, n_classes)
    result = {}
    for k, s in scores.items():
        top = s.topk(min(5, n_classes), dim=1).indices
        y = test_labels.long().view(-1, 1)
        result[k] = {
            "top1": 100.0 * float((top[:, :1] == y).any(1).float().mean()),
            "top5": 100.0 * float((top == y).any(1).float().mean()),
        }
    return result
