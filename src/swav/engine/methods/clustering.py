"""DeepCluster-v2 (``method=deepclusterv2``) and SeLa-v2 (``method=selav2``): a memory bank of
the assignment crops' embeddings, filled once before training, and pseudo-labels computed from
it at the start of every epoch (k-means, or Sinkhorn over the bank). The bank is kept in the
checkpoint (every process's: each holds the images it saw)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from swav.config import Config
from swav.engine.distributed import DistInfo
from swav.engine.method import Method, ObjectiveInputs, TrainingContext, register_method
from swav.errors import ConfigError
from swav.objective.cluster_loss import ClusterLoss
from swav.objective.swav_loss import Objective

log = logging.getLogger(__name__)


class ClusteringMethod(Method):
    streams = False  # the bank is indexed by image

    def __init__(self, name: str, how: str) -> None:
        self.name, self.how = name, how

    def check(self, cfg: Config, world_size: int) -> None:
        if cfg.method == "deepclusterv2" and cfg.cluster.kmeans_iterations < 1:
            raise ConfigError("cluster.kmeans_iterations: must be >= 1")
        if cfg.swav.queue_length != 0:
            raise ConfigError(
                f"swav.queue_length: must be 0 for {cfg.method} (its memory bank replaces the "
                "queue)"
            )

    def build_objective(self, given: ObjectiveInputs) -> Objective:
        return ClusterLoss(
            self.name,
            given.swav,
            given.cfg.cluster,
            embedding_dim=given.core.embedding_dim,
            n_images=given.images,
            bank_rows=given.bank_rows,
            seed=given.cfg.train.seed,
        )

    @torch.no_grad()
    def prepare(self, t: TrainingContext) -> None:
        """The memory bank's first contents: the assignment crops' embeddings of one pass over
        the data in the current epoch's order, without training (the model in evaluation mode,
        so that the BatchNorm statistics are not touched)."""
        obj = t.objective
        assert isinstance(obj, ClusterLoss)
        if obj.bank.filled:
            return
        t0 = time.time()
        if t.dist.is_main:
            log.info("%s: filling the memory bank (one pass over the data)", self.name)
        t.sampler.set_epoch(t.epoch, 0)
        t.core.eval()
        batch = t.cfg.train.batch_size
        for batch_idx, (crops, _labels, indices, _bad) in enumerate(t.loader):
            crops, indices = t.to_device(crops, indices)
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

    def start_epoch(self, t: TrainingContext, epoch: int) -> None:
        """The epoch's pseudo-labels, logged and recorded."""
        obj = t.objective
        assert isinstance(obj, ClusterLoss) and t.core.prototypes is not None
        done: dict[str, Any] = obj.start_epoch(epoch, t.core.prototypes)
        if done and t.dist.is_main:
            log.info(
                "epoch %d: %s of %d banked images, %d heads (%d empty clusters re-seeded)",
                epoch + 1,
                self.how,
                done["images"],
                done["heads"],
                done["empty_clusters_reseeded"],
            )
            t.record("clustering", epoch=epoch + 1, **done)

    def save(self, objective: Objective, info: DistInfo) -> dict[str, Any]:
        """The bank and the pseudo-labels; with several processes, every process's bank."""
        assert isinstance(objective, ClusterLoss)
        st = objective.extra_state()
        if info.enabled:
            bank = st["bank"]
            for key in ("embeddings", "indices"):
                part = bank[key].contiguous()
                parts = [torch.zeros_like(part) for _ in range(info.world_size)]
                dist.all_gather(parts, part)
                bank[key] = torch.stack(parts).cpu()
            st["per_rank"] = True
        return {"objective": st}

    def load(self, objective: Objective, info: DistInfo, state: dict[str, Any]) -> None:
        assert isinstance(objective, ClusterLoss)
        if state.get("objective") is None:
            return
        st = dict(state["objective"])
        if st.pop("per_rank", False):
            bank = dict(st["bank"])
            if bank["indices"].shape[0] != info.world_size:
                log.warning(
                    "the memory bank was saved by %d processes, this run has %d: it is filled "
                    "again",
                    bank["indices"].shape[0],
                    info.world_size,
                )
                return
            st["bank"] = {k: v[info.rank] for k, v in bank.items()}
        objective.load_extra_state(st)


register_method(ClusteringMethod("deepclusterv2", "k-means"))
register_method(ClusteringMethod("selav2", "Sinkhorn pseudo-labels"))
