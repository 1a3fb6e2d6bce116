"""The SwAV objective of one training step (SwAV paper, Sec. 3 and Appendix A).

For every prototype head: the scores of the assigned crops (the large ones), preceded by the
queue's scores against the current prototypes once the queue is in use, go through Sinkhorn-Knopp
to give the codes of the current batch; every other crop predicts them (the swapped prediction
loss); the heads' losses are averaged. The current embeddings then enter the queue. During the
first iterations the prototypes are frozen: their gradients are dropped after the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from swav.model.swav import SwAVOutput
from swav.objective.loss import swapped_prediction_loss
from swav.objective.queue import FeatureQueue
from swav.objective.settings import SwAVConfig
from swav.objective.sinkhorn_knopp import sinkhorn
from swav.run_length import absolute


@dataclass
class SwAVStep:
    """The loss of one step, and the codes of the first assigned crop (first head), B x K, for
    the health statistics."""

    loss: Tensor
    codes: Tensor
    spread: Tensor
    """Mean over dimensions of the standard deviation of the first crop's embeddings across the
    batch: near 0 when the network maps every image to the same point (collapse)."""


@dataclass
class StepInput:
    """What an objective sees of one training step."""

    out: SwAVOutput
    """The model's output over all crops (rows of crop v: v*B to (v+1)*B)."""
    prototypes: nn.Module
    batch_size: int
    epoch: int
    indices: Tensor | None = None
    """The images' dataset indices (used by the clustering methods' memory bank)."""
    position: int = 0
    """The images' first row in this epoch's memory bank."""


class Objective(nn.Module):
    """What the engine trains: a loss per step from the model's output, with the prototypes'
    freezing rule and, for SwAV, the feature queue."""

    cfg: SwAVConfig
    queue: FeatureQueue | None  # no class-level value: it would hide the registered module

    def forward(
        self,
        out: SwAVOutput,
        prototypes: nn.Module,
        batch_size: int,
        epoch: int,
        indices: Tensor | None = None,
        position: int = 0,
    ) -> SwAVStep:
        return self.step(StepInput(out, prototypes, batch_size, epoch, indices, position))

    def step(self, inputs: StepInput) -> SwAVStep:
        raise NotImplementedError

    def queue_in_use(self, epoch: int) -> bool:
        return False

    def queue_active(self, epoch: int) -> bool:
        return False

    def freeze_prototypes(self, prototypes: nn.Module | None, iteration: int) -> bool:
        raise NotImplementedError


class SwAVLoss(Objective):
    """Swapped prediction over Sinkhorn codes, with the feature queue and prototype freezing.

    Args:
        cfg: the objective's settings.
        embedding_dim: dimension of the embeddings the queue stores.
        world_size: processes in the run (each holds ``queue_length / world_size`` embeddings).
    """

    def __init__(self, cfg: SwAVConfig, embedding_dim: int, world_size: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.queue: FeatureQueue | None = None
        if cfg.queue_length:
            self.queue = FeatureQueue(
                len(cfg.crops_for_assign), cfg.queue_length // world_size, embedding_dim
            )

    def queue_in_use(self, epoch: int) -> bool:
        """The queue is filled (and, once full, used) from ``epoch_queue_starts`` on."""
        start = absolute(self.cfg.epoch_queue_starts, "swav.epoch_queue_starts")
        return self.queue is not None and epoch >= start

    def queue_active(self, epoch: int) -> bool:
        """True when this epoch's codes are computed with the queue's embeddings."""
        return self.queue is not None and self.queue_in_use(epoch) and self.queue.active

    def step(self, inputs: StepInput) -> SwAVStep:
        """The loss for one forward output over all crops (rows of crop v: v*B to (v+1)*B)."""
        out, prototypes, batch_size, epoch = (
            inputs.out,
            inputs.prototypes,
            inputs.batch_size,
            inputs.epoch,
        )
        cfg = self.cfg
        queue = self.queue if self.queue_in_use(epoch) else None
        queue_scores = self._queue_scores(queue, prototypes)
        n_crops = out.embeddings.shape[0] // batch_size
        losses, first_codes = [], None
        for h, scores in enumerate(out.scores):
            per_crop = list(scores.split(batch_size))
            codes = [
                self._codes(per_crop[crop], queue_scores.get(crop), h, batch_size)
                for crop in cfg.crops_for_assign
            ]
            if first_codes is None:
                first_codes = codes[0]
            losses.append(
                swapped_prediction_loss(
                    per_crop[:n_crops], codes, cfg.crops_for_assign, cfg.temperature
                )
            )
        if queue is not None:
            emb = out.embeddings.detach().split(batch_size)
            queue.push([emb[c] for c in cfg.crops_for_assign])
        assert first_codes is not None, "the model has no prototypes"
        spread = out.embeddings[:batch_size].detach().float().std(dim=0).mean()
        return SwAVStep(torch.stack(losses).mean(), first_codes, spread)

    def _queue_scores(
        self, queue: FeatureQueue | None, prototypes: nn.Module
    ) -> dict[int, list[Tensor]]:
        if queue is None or not queue.active:
            return {}
        return {
            crop: queue.scores(i, prototypes) for i, crop in enumerate(self.cfg.crops_for_assign)
        }

    @torch.no_grad()
    def _codes(
        self, scores: Tensor, queued: Sequence[Tensor] | None, head: int, batch_size: int
    ) -> Tensor:
        s = scores.detach()
        if queued is not None:
            s = torch.cat([queued[head].to(s.dtype), s])
        cfg = self.cfg
        q = sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iterations, distributed=cfg.global_sinkhorn)
        return q[-batch_size:]

    def freeze_prototypes(self, prototypes: nn.Module | None, iteration: int) -> bool:
        """Drop the prototypes' gradients during the first ``freeze_prototypes_niters``
        iterations (call it between the backward pass and the optimiser step). With
        ``grad = None`` the optimiser skips them entirely: no momentum and no weight decay.
        Returns True while frozen."""
        frozen = absolute(self.cfg.freeze_prototypes_niters, "swav.freeze_prototypes_niters")
        if iteration >= frozen or prototypes is None:
            return False
        for p in prototypes.parameters():
            p.grad = None
        return True
