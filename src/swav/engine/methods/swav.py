"""SwAV (``method=swav``): online Sinkhorn codes and the swapped prediction, with the feature
queue kept in the checkpoint (every process's, so that each resumes with its own)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from swav.engine.distributed import DistInfo
from swav.engine.method import Method, ObjectiveInputs, register_method
from swav.objective.queue import FeatureQueue
from swav.objective.swav_loss import Objective, SwAVLoss

log = logging.getLogger(__name__)


class SwAVMethod(Method):
    name = "swav"

    def build_objective(self, given: ObjectiveInputs) -> Objective:
        return SwAVLoss(given.swav, given.core.embedding_dim, given.world_size)

    def save(self, objective: Objective, dist: DistInfo) -> dict[str, Any]:
        queue = objective.queue
        return {"queue": None if queue is None else queue_state(queue, dist)}

    def load(self, objective: Objective, dist: DistInfo, state: dict[str, Any]) -> None:
        if objective.queue is not None and state.get("queue") is not None:
            load_queue(objective.queue, dist, dict(state["queue"]))


def queue_state(queue: FeatureQueue, info: DistInfo) -> dict[str, Any]:
    """The queue's checkpoint entry; with several processes, every process's queue."""
    if not info.enabled:
        return dict(queue.state_dict())
    emb = queue.embeddings
    parts = [torch.zeros_like(emb) for _ in range(info.world_size)]
    dist.all_gather(parts, emb.contiguous())
    return {"embeddings": emb.cpu(), "filled": queue.filled, "per_rank": torch.stack(parts).cpu()}


def load_queue(queue: FeatureQueue, info: DistInfo, q: dict[str, Any]) -> None:
    """This process's queue from the checkpoint; saved by another number of processes, the
    queue is dealt out again (every saved embedding is kept)."""
    per_rank = q.pop("per_rank", None)
    saved = per_rank if per_rank is not None else q["embeddings"].unsqueeze(0)
    if saved.shape[0] == info.world_size:
        q["embeddings"] = saved[info.rank]
        queue.load_state_dict(q)
        return
    # the filled rows of every saved queue (each fills from the front), dealt out again:
    # empty slots never count as embeddings
    filled = min(int(q["filled"]), saved.shape[2])
    real = torch.cat([part[:, :filled] for part in saved], dim=1)
    mine = min(queue.length, real.shape[1] // info.world_size)
    if mine < real.shape[1] // info.world_size:
        log.warning(
            "the saved queue holds %d embeddings, more than %d queues of %d: the oldest are "
            "left out",
            real.shape[1],
            info.world_size,
            queue.length,
        )
    embeddings = torch.zeros_like(queue.embeddings, device="cpu")
    start = info.rank * mine
    embeddings[:, :mine] = real[:, start : start + mine]
    queue.load_state_dict({"embeddings": embeddings, "filled": torch.tensor(mine)})


register_method(SwAVMethod())
