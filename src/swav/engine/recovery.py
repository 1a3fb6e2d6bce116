"""What a run does when it collapses (``train.on_collapse``): warn and go on, stop, or recover.

To recover, the run rewinds to its last healthy checkpoint (``checkpoint_healthy.pt``, kept at
every epoch end whose signals were healthy, and at the start) and changes what the evidence
points to, logging each change:

- embeddings collapsed to one point: the steps were too large; the learning rate is halved;
- uniform codes while the queue was in use: the queue started before the features settled; it
  starts later (10 % of the run after the current epoch) and is emptied;
- uniform codes before a configured queue started: the batch alone is too small for K
  prototypes; the queue starts at once (at the epoch the run rewinds to);
- uniform codes with spread embeddings and no queue: epsilon is too large for the scores'
  range; it is halved (not below 0.01);
- in every case the prototypes are frozen again for as long as at the start of the run (at
  least one epoch).

The changes are kept in the checkpoint (``recovery``), so a resumed run keeps them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from swav.engine.health import Collapse

MIN_EPSILON = 0.01


@dataclass
class Adjustments:
    """The settings recoveries changed (None / 1.0: as configured)."""

    lr_scale: float = 1.0
    epsilon: float | None = None
    freeze_until: int = 0
    queue_start: int | None = None
    recoveries: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Adjustments:
        return cls(**state) if state else cls()


def plan_recovery(
    collapse: Collapse,
    current: Adjustments,
    epsilon: float,
    freeze_iters: int,
    restart_iteration: int,
    epoch: int,
    epochs: int,
    iters_per_epoch: int,
    queue_waiting: bool = False,
) -> tuple[Adjustments, dict[str, str]]:
    """The adjustments after ``collapse`` and a description of each change.

    Args:
        epsilon: the epsilon in use; freeze_iters: the configured freezing (iterations);
        restart_iteration: the iteration the run rewinds to; epoch: the epoch it collapsed in.
        queue_waiting: a queue is configured but had not started yet.
    """
    new = Adjustments(**current.state_dict())
    changes: dict[str, str] = {}
    if collapse.flat_embeddings:
        new.lr_scale = current.lr_scale * 0.5
        changes["learning rate"] = f"x{new.lr_scale:g} of the schedule (embeddings collapsed)"
    elif collapse.queue_active:
        new.queue_start = epoch + max(1, math.ceil(0.1 * epochs))
        changes["queue"] = f"starts at epoch {new.queue_start} (codes uniform with the queue)"
    elif queue_waiting:
        new.queue_start = restart_iteration // iters_per_epoch
        changes["queue"] = f"starts at epoch {new.queue_start} (codes uniform without it)"
    else:
        new.epsilon = max(MIN_EPSILON, epsilon * 0.5)
        changes["epsilon"] = f"{epsilon:g} -> {new.epsilon:g} (codes uniform)"
    freeze = max(freeze_iters, iters_per_epoch)
    new.freeze_until = restart_iteration + freeze
    changes["prototypes"] = f"frozen until iteration {new.freeze_until}"
    record = {"iteration": collapse.iteration, "evidence": collapse.describe(), **changes}
    new.recoveries = [*current.recoveries, record]
    return new, changes
