"""The engine's side of the clustering methods (``method=deepclusterv2`` / ``selav2``): the
objective chosen by the method, the memory bank's first fill, and the pseudo-labels computed
at the start of each epoch. SwAV needs none of it; everything else (data, model, optimiser,
checkpoints, health checks) is shared."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from swav.config import Config
from swav.engine.distributed import DistInfo
from swav.model.swav import SwAV
from swav.objective.cluster_loss import ClusterLoss
from swav.objective.swav_loss import Objective, SwAVLoss

if TYPE_CHECKING:
    from swav.engine.train import Trainer

log = logging.getLogger(__name__)


def make_objective(
    cfg: Config, core: SwAV, info: DistInfo, n_images: int, bank_rows: int
) -> Objective:
    """SwAV's objective, or the clustering method's with a memory bank of ``bank_rows`` rows
    (this process's images of one epoch)."""
    if cfg.method == "swav":
        return SwAVLoss(cfg.swav, core.embedding_dim, info.world_size)
    return ClusterLoss(
        cfg.method, cfg.swav, cfg.cluster, core.embedding_dim, n_images, bank_rows, cfg.train.seed
    )


@torch.no_grad()
def fill_bank(t: Trainer) -> None:
    """The memory bank's first contents: the assignment crops' embeddings of one pass over the
    data in the current epoch's order, without training (the model in evaluation mode, so
    that the BatchNorm statistics are not touched)."""
    obj = t.objective
    if not isinstance(obj, ClusterLoss) or obj.bank.filled:
        return
    from swav.engine.train import batch_to_device

    t0 = time.time()
    if t.dist.is_main:
        log.info("%s: filling the memory bank (one pass over the data)", t.cfg.method)
    t.sampler.set_epoch(t.state.epoch, 0)
    t.core.eval()
    batch = t.cfg.train.batch_size
    for batch_idx, (crops, _labels, indices, _bad) in enumerate(t.loader):
        crops, indices = batch_to_device(t, crops, indices)
        if crops is None:
            continue
        with t.autocast:
            embeddings = [
                t.core.forward_head(t.core.forward_backbone(crops[c])).embeddings.float()
                for c in t.cfg.swav.crops_for_assign
            ]
        obj.bank.store(batch_idx * batch, indices, embeddings)
    t.core.train()
    if t.dist.is_main:
        log.info("memory bank filled in %.0f s", time.time() - t0)


def start_epoch(t: Trainer, epoch: int) -> None:
    """The epoch's pseudo-labels (k-means or Sinkhorn over the bank), logged and recorded."""
    obj = t.objective
    if not isinstance(obj, ClusterLoss):
        return
    assert t.core.prototypes is not None
    done: dict[str, Any] = obj.start_epoch(epoch, t.core.prototypes)
    if done and t.dist.is_main:
        how = "k-means" if t.cfg.method == "deepclusterv2" else "Sinkhorn pseudo-labels"
        log.info(
            "epoch %d: %s of %d banked images, %d heads (%d empty clusters re-seeded)",
            epoch + 1,
            how,
            done["images"],
            done["heads"],
            done["empty_clusters_reseeded"],
        )
        if t.logger is not None:
            t.logger.record("clustering", epoch=epoch + 1, **done)
