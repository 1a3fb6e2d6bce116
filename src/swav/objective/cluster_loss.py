"""The objectives of DeepCluster-v2 and SeLa-v2 (SwAV paper, Sec. 4.3 and Appendix B), trained
by the same engine as SwAV.

Both keep a memory bank of each image's normalised embeddings for the assignment crops (filled
by a pass over the data before the first epoch, then refreshed by every step), assign every
image a pseudo-label per prototype head at the start of each epoch from the bank, and train
every crop's prototype scores (temperature ``swav.temperature``) with a cross-entropy against
its image's label:

- DeepCluster-v2: the labels come from spherical k-means of the bank (one clustering per
  head), the prototypes are set to the centroids and never trained;
- SeLa-v2: the labels come from the Sinkhorn-Knopp equal-partition problem solved over the
  whole bank against the current prototypes (hard labels, once per epoch), and the prototypes
  are trained. SwAV instead computes soft codes online for every batch.

The bank, the epoch's labels and the random seed of the clustering are saved with the
checkpoint, so that a resumed run continues with the same bank and the same next loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swav.objective.clustering import BankShard, global_labels, sela_assignments, spherical_kmeans
from swav.objective.settings import ClusterConfig, SwAVConfig
from swav.objective.swav_loss import Objective, StepInput, SwAVStep
from swav.run_length import absolute


class MemoryBank(nn.Module):
    """This process's embeddings of the assignment crops for one epoch's images: ``rows`` per
    crop, with the dataset index of each row (-1: empty)."""

    embeddings: Tensor
    indices: Tensor

    def __init__(self, n_crops: int, rows: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(n_crops, rows, dim))
        self.register_buffer("indices", torch.full((rows,), -1, dtype=torch.long))

    @property
    def filled(self) -> bool:
        return bool((self.indices >= 0).any())

    def store(self, position: int, indices: Tensor, embeddings: list[Tensor]) -> None:
        """Write a batch's embeddings (one tensor per assignment crop) from row ``position``."""
        end = min(position + len(indices), self.indices.shape[0])
        n = end - position
        self.indices[position:end] = indices[:n].to(self.indices.device)
        for c, e in enumerate(embeddings):
            self.embeddings[c, position:end] = e[:n].detach().to(self.embeddings.dtype)

    def shard(self, crop: int) -> BankShard:
        return BankShard(self.embeddings[crop], self.indices)


class ClusterLoss(Objective):
    """Cross-entropy of every crop's scores against its image's pseudo-label, per head."""

    labels: Tensor

    def __init__(
        self,
        method: str,
        swav: SwAVConfig,
        cluster: ClusterConfig,
        embedding_dim: int,
        n_images: int,
        bank_rows: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in ("deepclusterv2", "selav2"):
            raise ValueError(f"unknown clustering method {method!r}")
        self.method, self.cfg, self.cluster = method, swav, cluster
        self.n_images, self.seed = n_images, seed
        self.bank = MemoryBank(len(swav.crops_for_assign), bank_rows, embedding_dim)
        self.register_buffer("labels", torch.full((0, n_images), -1, dtype=torch.long))
        self.labels_epoch = -1
        self.queue = None  # no feature queue: the bank plays its part

    @torch.no_grad()
    def start_epoch(self, epoch: int, prototypes: nn.Module) -> dict[str, Any]:
        """The epoch's pseudo-labels from the bank (and, for DeepCluster-v2, the prototypes set
        to the centroids). Kept when they were already computed for this epoch (a resume in
        the middle of it). Returns what was done, for the log."""
        if self.labels_epoch == epoch and self.labels.shape[0]:
            return {}
        heads = _heads(prototypes)
        labels, reseeded = [], 0
        for h, weight in enumerate(heads):
            shard = self.bank.shard(h % self.bank.embeddings.shape[0])
            if self.method == "deepclusterv2":
                seed = self.seed * 1_000_003 + epoch * 101 + h
                k = weight.shape[0]
                centroids, assign, empty = spherical_kmeans(
                    shard, k, self.n_images, self.cluster.kmeans_iterations, seed
                )
                weight.copy_(centroids.to(weight.dtype))
                reseeded += empty
            else:
                _, assign = sela_assignments(
                    shard, weight, self.cluster.sela_epsilon, self.cluster.sela_iterations
                )
            labels.append(global_labels(shard, assign, self.n_images))
        self.labels = torch.stack(labels)
        self.labels_epoch = epoch
        used = [int((lab >= 0).sum()) for lab in labels]
        return {"heads": len(heads), "images": used[0], "empty_clusters_reseeded": reseeded}

    def step(self, inputs: StepInput) -> SwAVStep:
        """The loss of a step over all crops (rows of crop v: v*B to (v+1)*B) of the images
        ``inputs.indices``; their assignment-crop embeddings enter the bank from row
        ``inputs.position``."""
        out, batch_size, indices = inputs.out, inputs.batch_size, inputs.indices
        assert indices is not None, "clustering methods need the images' dataset indices"
        n_crops = out.embeddings.shape[0] // batch_size
        emb = out.embeddings.detach().split(batch_size)
        self.bank.store(inputs.position, indices, [emb[c] for c in self.cfg.crops_for_assign])
        losses = []
        for h, scores in enumerate(out.scores):
            targets = self.labels[h][indices.to(self.labels.device)].repeat(n_crops)
            logits = scores.float() / self.cfg.temperature
            if bool((targets >= 0).any()):
                losses.append(F.cross_entropy(logits, targets, ignore_index=-1))
            else:
                losses.append(logits.sum() * 0.0)
        first = out.scores[0][:batch_size].detach().float()
        codes = torch.softmax(first / self.cfg.temperature, dim=1)
        spread = out.embeddings[:batch_size].detach().float().std(dim=0).mean()
        return SwAVStep(torch.stack(losses).mean(), codes, spread)

    def freeze_prototypes(self, prototypes: nn.Module | None, iteration: int) -> bool:
        """DeepCluster-v2's prototypes are the centroids: never trained. SeLa-v2's follow
        ``swav.freeze_prototypes_niters`` like SwAV's."""
        frozen = absolute(self.cfg.freeze_prototypes_niters, "swav.freeze_prototypes_niters")
        if prototypes is None or (self.method == "selav2" and iteration >= frozen):
            return False
        for p in prototypes.parameters():
            p.grad = None
        return True

    def extra_state(self) -> dict[str, Any]:
        return {
            "bank": self.bank.state_dict(),
            "labels": self.labels.cpu(),
            "labels_epoch": self.labels_epoch,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.labels = state["labels"].to(self.bank.indices.device)
        self.labels_epoch = int(state["labels_epoch"])


def _heads(prototypes: nn.Module) -> list[Tensor]:
    """The weight (K x d) of every prototype head."""
    heads: Any = getattr(prototypes, "heads", None)
    modules: list[Any] = heads() if callable(heads) else [prototypes]
    return [m.weight for m in modules]
