"""The loop's side of ``train.on_collapse``: the copies a collapse would rewind to, and the
rewind itself (the changes are planned by ``swav.engine.recovery``)."""

from __future__ import annotations

import logging

from swav.engine.checkpoint import keep_copy, safe_load
from swav.engine.health import COLLAPSE_ADVICE, Collapse, CollapseError
from swav.engine.recovery import plan_recovery
from swav.engine.trainer import Trainer, frozen_iterations

log = logging.getLogger(__name__)


def keep_copies(t: Trainer, epochs_done: int) -> None:
    """The periodic copy (``train.save_every``) and, while the run is healthy, the copy a
    collapse would rewind to."""
    assert t.logger is not None
    every = t.cfg.train.save_every
    if t.dist.is_main and every and epochs_done % every == 0:
        keep_copy(t.run.checkpoint, t.run.periodic_checkpoint(epochs_done))
    recover = t.cfg.train.on_collapse == "recover"
    if t.dist.is_main and recover and t.logger.monitor.healthy:
        keep_copy(t.run.checkpoint, t.run.healthy_checkpoint)


def after_collapse(t: Trainer, collapse: Collapse, epoch: int) -> None:
    """``train.on_collapse`` = stop: raise; recover: rewind to the last healthy checkpoint and
    change what the evidence points to (each change logged, recorded, and kept in the run
    state: the configuration stays as given)."""
    assert t.logger is not None
    done = t.state.adjustments.recoveries
    if t.cfg.train.on_collapse == "stop" or len(done) >= t.cfg.train.max_recoveries:
        why = "" if t.cfg.train.on_collapse == "stop" else f" after {len(done)} recoveries"
        raise CollapseError(
            f"{collapse.describe()}; stopped{why}. {t.run.checkpoint} is the last epoch's state"
            f"{f' and {t.run.healthy_checkpoint} the last healthy one' if done else ''}. "
            + COLLAPSE_ADVICE
        )
    current = t.state.adjustments
    t.state.load_state_dict(safe_load(t.run.healthy_checkpoint))
    t.method.prepare(t)  # e.g. a memory bank saved empty: filled again
    restart = t.state.epoch * t.iters + t.state.next_batch
    queue = t.objective.queue
    adjusted, changes = plan_recovery(
        collapse,
        current,
        epsilon=t.objective.cfg.epsilon,
        freeze_iters=frozen_iterations(t.base_swav),
        restart_iteration=restart,
        epoch=epoch,
        epochs=t.cfg.train.epochs,
        iters_per_epoch=t.iters,
        queue_waiting=queue is not None and not t.objective.queue_in_use(epoch),
    )
    t.state.adjustments = adjusted
    if "queue" in changes and queue is not None:
        queue.reset()
    t.apply_adjustments()
    t.logger.monitor.restart(frozen_iterations(t.objective.cfg))
    for what, change in changes.items():
        log.warning("recovering from collapse: %s %s", what, change)
    t.logger.record("recovery", iteration=collapse.iteration, rewound_to=restart, **changes)
