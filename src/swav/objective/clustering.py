"""Offline clustering of a memory bank, for DeepCluster-v2 and SeLa-v2 (SwAV paper, Sec. 4.3
and Appendix B): spherical k-means, and Sinkhorn-Knopp pseudo-labels under the equal-partition
constraint, over the embeddings of the whole dataset.

The bank is sharded over processes: each holds the embeddings of the images it saw, with their
dataset indices. Every choice that depends on the data (initial centroids, re-seeded empty
clusters) is made from dataset indices with a seeded generator, and every sum is all-reduced,
so that any number of processes computes the same centroids and assignments as one process
holding the whole bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from swav.objective.sinkhorn_knopp import sinkhorn


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum(t: Tensor) -> Tensor:
    if _dist():
        dist.all_reduce(t)
    return t


@dataclass
class BankShard:
    """This process's part of the bank: embeddings (n x d, L2-normalised) and the dataset
    index of each row (rows with index -1 are empty)."""

    embeddings: Tensor
    indices: Tensor

    def filled(self) -> BankShard:
        keep = self.indices >= 0
        return BankShard(self.embeddings[keep], self.indices[keep])


def _present(shard: BankShard, n_images: int) -> Tensor:
    """The dataset indices held by some process, sorted (the same on every process)."""
    mask = torch.zeros(n_images, dtype=torch.float32, device=shard.indices.device)
    mask[shard.indices] = 1.0
    return torch.nonzero(_sum(mask) > 0).flatten()


def _rows_of(shard: BankShard, wanted: Tensor, n_images: int) -> Tensor:
    """The embeddings of the dataset indices ``wanted`` (k x d), gathered from whichever process
    holds each."""
    where = torch.full((n_images,), -1, dtype=torch.long, device=shard.indices.device)
    where[shard.indices] = torch.arange(len(shard.indices), device=where.device)
    rows = torch.zeros(len(wanted), shard.embeddings.shape[1], device=shard.embeddings.device)
    local = where[wanted]
    held = local >= 0
    rows[held] = shard.embeddings[local[held]].float()
    return _sum(rows)


def spherical_kmeans(
    shard: BankShard, k: int, n_images: int, iterations: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor, int]:
    """Spherical k-means over the whole (sharded) bank.

    Centroids start at ``k`` rows drawn at random (by dataset index, from ``seed``); each
    iteration assigns every row to its most similar centroid (cosine) and sets each centroid
    to the normalised sum of its rows; a cluster left empty is re-seeded with a random row.
    Returns (centroids k x d, this shard's assignments, clusters re-seeded)."""
    shard = shard.filled()
    present = _present(shard, n_images)
    if len(present) < k:
        raise ValueError(f"k-means of {len(present)} embeddings into {k} clusters")
    g = torch.Generator().manual_seed(seed)
    pick = present[torch.randperm(len(present), generator=g)[:k].to(present.device)]
    centroids = F.normalize(_rows_of(shard, pick, n_images), dim=1)
    x = shard.embeddings.float()
    reseeded = 0
    assign = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        sums, counts = _sum(sums), _sum(counts)
        empty = torch.nonzero(counts == 0).flatten()
        centroids = F.normalize(sums, dim=1)
        if len(empty):
            reseeded += len(empty)
            new = present[torch.randperm(len(present), generator=g)[: len(empty)].to(x.device)]
            centroids[empty] = F.normalize(_rows_of(shard, new, n_images), dim=1)
    assign = (x @ centroids.T).argmax(1)
    return centroids, assign, reseeded


def sela_assignments(
    shard: BankShard, prototypes: Tensor, epsilon: float = 0.05, iterations: int = 10
) -> tuple[Tensor, Tensor]:
    """SeLa pseudo-labels: the codes of every banked embedding under the equal-partition
    constraint over the whole (sharded) bank (Sinkhorn-Knopp on the prototype scores), and the
    label of each row (its largest code). Returns (codes n x K, labels n) of this shard."""
    shard = shard.filled()
    scores = shard.embeddings.float() @ F.normalize(prototypes.float(), dim=1).T
    codes = sinkhorn(scores, epsilon, iterations, distributed=True)
    return codes, codes.argmax(1)


def global_labels(shard: BankShard, labels: Tensor, n_images: int) -> Tensor:
    """A label per dataset index (-1: not in the bank), the same on every process."""
    shard = shard.filled()
    out = torch.zeros(n_images, dtype=torch.long, device=labels.device)
    seen = torch.zeros(n_images, dtype=torch.long, device=labels.device)
    out[shard.indices] = labels + 1
    seen[shard.indices] = 1
    out, seen = _sum(out), _sum(seen)
    return torch.where(seen > 0, out // seen.clamp(min=1) - 1, torch.full_like(out, -1))
