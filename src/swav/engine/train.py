"""The pretraining loop: multi-crop batches -> the method's objective -> optimiser step, with
checkpoints, resume, metrics, health checks and a time budget.

``pretrain`` reads top to bottom: settle the device, refuse a mismatched run directory, open the
data, build the model, the method's objective and the optimiser (``swav.engine.trainer``), resume,
then run ``train_one_epoch`` until done. The method is reached only through its ``Method`` hooks
(``swav.engine.method``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import swav.engine.methods  # noqa: F401  (registers the built-in methods)
from swav.config import Config, save_config, validate
from swav.data.images import DataError
from swav.engine import pacing
from swav.engine.curves import plot_loss_curve
from swav.engine.distributed import (
    DistInfo,
    PeerLostError,
    any_rank,
    init_distributed,
    is_peer_failure,
    shutdown,
)
from swav.engine.health import Collapse
from swav.engine.host_memory import freed_memory_kept
from swav.engine.method import Method, method_of
from swav.engine.optim import set_lr
from swav.engine.recovery import Adjustments
from swav.engine.rewind import after_collapse, keep_copies
from swav.engine.run_dir import (
    RunDir,
    RunLock,
    RunLockedError,
    check_writable_dir,
    describe_holder,
    tidy_after_kill,
)
from swav.engine.runtime import StopFlag, resolve_device
from swav.engine.state import ConfigMismatchError, load_saved_weights, saved_state
from swav.engine.trainer import (
    Trainer,
    batch_to_device,
    build_logger,
    build_trainer,
    training_step,
)
from swav.errors import ConfigError
from swav.model.config import build_from_config
from swav.model.swav import SwAV
from swav.model.warm_start import warm_start

log = logging.getLogger(__name__)

__all__ = ["pretrain", "train_one_epoch", "TrainResult", "Trainer", "ConfigMismatchError"]


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    iterations: int
    last_loss: float
    """The mean loss of the last epoch trained (of the last iterations, when the run stopped
    before an epoch ended)."""
    interrupted: bool = False
    corrupt: list[str] = field(default_factory=list)
    model: SwAV | None = None
    healthy: bool = True
    """False when the run ended with its health signals collapsed."""
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """One entry per recovery from collapse: the evidence and what was changed."""
    already_finished: bool = False
    """The run directory held a finished run: nothing was trained or written."""
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early, on every rank."""


def pretrain(
    cfg: Config,
    allow_config_change: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    initial_weights: Mapping[str, Tensor] | None = None,
) -> TrainResult:
    """Train the configured method, resuming from the run directory's checkpoint when it exists.

    Args:
        cfg: the configuration (checked here for the world size, the method and the data's
            size; never changed).
        allow_config_change: resume even if the checkpoint was written with other settings.
        progress: show a progress bar (main process only).
        stop_after_epoch: stop (as if interrupted) once this many epochs are done.
        initial_weights: the weights ``model.init`` names, for a new run (``swav.pretrain``
            reads them from the name or file; see ``swav.interop.checkpoints.initial_weights``).
    """
    options = RunOptions(
        allow_config_change=allow_config_change,
        progress=progress,
        stop_after_epoch=stop_after_epoch,
        started=time.monotonic(),
        initial_weights=initial_weights,
    )
    info = init_distributed(resolve_device(cfg.train.device))
    threads, clean = torch.get_num_threads(), True
    try:
        return _pretrain(cfg, info, options)
    except Exception as e:
        if info.enabled and is_peer_failure(e):
            clean = False
            raise PeerLostError(
                f"process {info.rank} of {info.world_size}: another process of the run stopped "
                f"({' '.join(str(e).split())[:160]}); {RunDir.of(cfg.run_dir).checkpoint} holds "
                "the last complete checkpoint: run the same command again to resume"
            ) from e
        raise
    finally:
        torch.set_num_threads(threads)  # the caller's, as it was
        shutdown(info, clean)


@dataclass(frozen=True)
class RunOptions:
    """How ``pretrain`` was asked to run (see its arguments)."""

    allow_config_change: bool = False
    progress: bool = True
    stop_after_epoch: int | None = None
    started: float = 0.0
    """``time.monotonic()`` when ``pretrain`` was called (a time budget counts from there)."""
    initial_weights: Mapping[str, Tensor] | None = None


def _pretrain(cfg: Config, info: DistInfo, options: RunOptions) -> TrainResult:
    # -- the device, and the run directory: locked, then its checkpoint (before any data)
    device = resolve_device(cfg.train.device, info.local_rank)
    validate(cfg, world_size=info.world_size)
    method = method_of(cfg, info.world_size)
    run = RunDir.of(cfg.run_dir)
    check_writable_dir(run.path)
    with _locked(run, info):
        return _train_in(run, cfg, method, info, device, options)


@contextlib.contextmanager
def _locked(run: RunDir, info: DistInfo) -> Iterator[None]:
    """The run directory's lock, taken by the main process for the whole run; every process
    is refused together when another run holds it."""
    lock, refused = RunLock(run), None
    if info.is_main:
        try:
            lock.acquire()
        except RunLockedError as e:
            refused = str(e)
        if lock.previous:
            log.warning(
                "took over the lock of %s: that process is no longer running",
                describe_holder(lock.previous),
            )
    if info.enabled:
        box = [refused]
        torch.distributed.broadcast_object_list(box, src=0)
        refused = box[0]
    if refused:
        raise RunLockedError(refused)
    try:
        yield
    finally:
        lock.release()


def _train_in(
    run: RunDir,
    cfg: Config,
    method: Method,
    info: DistInfo,
    device: torch.device,
    options: RunOptions,
) -> TrainResult:
    saved = saved_state(run, cfg, options.allow_config_change)
    budget = pacing.run_budget(cfg, saved, options.started)
    planned = budget.epochs if budget is not None and budget.epochs else cfg.train.epochs
    if saved is not None and saved["epoch"] >= planned:
        return _finished(run, cfg, saved, info, device)  # before any data is listed

    # -- model, objective, optimiser, data
    t = build_trainer(cfg, info, device, run, method)
    t.budget = t.state.budget = budget
    if saved is None and cfg.model.init:
        if options.initial_weights is None:
            raise ConfigError(
                f"model.init={cfg.model.init}: swav.pretrain (and `swav pretrain`) read these "
                "weights; engine.train.pretrain needs them as initial_weights"
            )
        warm_start(t.core, options.initial_weights, f"model.init={cfg.model.init}")
    if saved is not None:
        t.state.load_state_dict(saved)
        if info.is_main:
            log.info(
                "resuming %s at epoch %d, batch %d", run.path, t.state.epoch, t.state.next_batch
            )
        del saved
    t.apply_adjustments()
    if run.checkpoint.exists() and info.is_main:
        tidy_after_kill(run, t.state.epoch * t.iters + t.state.next_batch)

    # -- the run directory and the logger
    if info.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    t.logger = build_logger(t, options.progress)
    if budget is not None:  # a resumed run follows the plan it made; a new one makes it
        pacing.first_plan(t, budget)
    method.prepare(t)  # e.g. a memory bank's first contents
    if cfg.train.on_collapse == "recover" and not run.healthy_checkpoint.exists():
        t.state.save(run.healthy_checkpoint)  # where a collapse in the first epoch rewinds to

    # -- the epochs
    try:
        with freed_memory_kept(device.type == "cpu" and cfg.train.keep_freed_memory):
            interrupted = _train_epochs(t, options.stop_after_epoch)
    except BaseException:
        t.logger.close()  # the progress bar ends its line before any error is shown
        raise
    healthy = t.logger.monitor.healthy
    recoveries = t.state.adjustments.recoveries
    t.logger.record("end", epoch=t.state.epoch, healthy=healthy, recoveries=len(recoveries))
    t.logger.close()
    if info.is_main and not interrupted:
        try:
            plot_loss_curve(run.path)
        except Exception as e:  # plotting is a convenience; never lose a run over it
            log.warning("could not draw the loss curve: %s", e)
    done = t.state.epoch
    return TrainResult(
        run_dir=run.path,
        epochs_done=done,
        iterations=done * t.iters,
        last_loss=t.logger.epoch_loss if math.isfinite(t.logger.epoch_loss) else t.logger.last_loss,
        interrupted=interrupted,
        corrupt=t.state.corrupt,
        model=t.core,
        healthy=healthy,
        recoveries=recoveries,
        stop_signal=t.stop_signal,
    )


def _finished(
    run: RunDir, cfg: Config, saved: dict[str, Any], info: DistInfo, device: torch.device
) -> TrainResult:
    """The result of a run that had already finished, read from its run directory and
    checkpoint (no data is read)."""
    epochs = [m for m in run.read_metrics() if m.get("kind") == "epoch"]
    last = epochs[-1] if epochs else {}
    if info.is_main:
        log.info("%s has finished its %d epochs: nothing to do", run.path, saved["epoch"])
    model = build_from_config(cfg.model).to(device)
    load_saved_weights(model, saved, cfg)
    return TrainResult(
        run_dir=run.path,
        epochs_done=saved["epoch"],
        iterations=int(saved["iteration"]),
        last_loss=float(last.get("loss", float("nan"))),
        corrupt=list(saved.get("corrupt", [])),
        model=model,
        healthy=bool(last.get("healthy", True)),
        recoveries=Adjustments.from_state(saved.get("recovery")).recoveries,
        already_finished=True,
    )


def _train_epochs(t: Trainer, stop_after_epoch: int | None) -> bool:
    """Runs the remaining epochs; True when the run stopped before its last epoch."""
    assert t.logger is not None
    with StopFlag() as stop:
        epoch = t.state.epoch
        while epoch < t.cfg.train.epochs:  # a time budget may change the number as it goes
            first = t.state.next_batch if epoch == t.state.epoch else 0
            if t.budget is not None:
                t.budget.begin_epoch()
            outcome = train_one_epoch(t, epoch, first, stop)
            if isinstance(outcome, Collapse):
                after_collapse(t, outcome, epoch)
                epoch = t.state.epoch
                continue
            if outcome:
                return True
            t.logger.end_epoch(t.objective.queue_active(epoch), len(t.state.corrupt))
            pacing.after_epoch(t, epoch + 1)
            t.checkpoint(epoch + 1, 0)
            keep_copies(t, epoch + 1)
            epoch += 1
            if t.stop_requested(stop.set):
                t.stop_signal = stop.signum or int(signal.SIGTERM)
                return epoch < t.cfg.train.epochs
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return epoch < t.cfg.train.epochs
    return False


def train_one_epoch(t: Trainer, epoch: int, first_batch: int, stop: StopFlag) -> bool | Collapse:
    """One pass over this process's share of the data, from ``first_batch`` on.

    Returns True when a stop signal ended the epoch early (a checkpoint is then written at the
    next batch, so the run resumes there), the collapse when the health signals declared one
    and ``train.on_collapse`` is not ``warn``, else False."""
    assert t.logger is not None
    logger, hint = t.logger, str(t.run.checkpoint)
    t.method.start_epoch(t, epoch)  # e.g. the epoch's pseudo-labels
    offset = t.state.sample_offset if epoch == t.state.epoch else 0
    t.sampler.set_epoch(epoch, start_sample=first_batch * t.sampler.global_batch + offset)
    t.model.train()
    logger.start_epoch(epoch, first_batch)
    steps = 0
    for batch_idx, (crops, _labels, indices, bad) in enumerate(t.loader, start=first_batch):
        iteration = epoch * t.iters + batch_idx
        if bad:
            t.state.corrupt += logger.skipped(bad)
        crops, indices = batch_to_device(t, crops, indices)
        if crops is None:
            _refuse_unreadable_data(t, steps, batch_idx - first_batch + 1)
            continue
        steps += 1
        lr = float(t.schedule[iteration]) * t.lr_scale
        set_lr(t.state.optimizer, lr)
        step = training_step(
            t, crops, iteration, epoch, indices, batch_idx * t.cfg.train.batch_size
        )
        images = crops[0].shape[0] * t.dist.world_size
        logger.step(iteration, step.loss, lr, step.codes, images, step.spread)
        t.step_timed(iteration, first=steps == 1)
        pacing.calibrate(t, epoch, steps)
        over = t.budget is not None and t.budget.overrun()
        stop_now = stop.set or over
        if t.dist.enabled:  # ranks agree on when to stop, every iteration (one float)
            stop_now = any_rank(stop_now, t.device)
        collapse = None
        if logger.due or stop_now:
            collapse = t.agree(logger.flush(t.objective.queue_active(epoch), hint))
        logger.advance()
        if stop_now:
            if stop.set:
                t.stop_signal = stop.signum or int(signal.SIGTERM)
            else:
                log.warning("the time budget ran out within epoch %d: stopped there", epoch + 1)
            t.checkpoint(epoch, batch_idx + 1)
            return True
        every = t.cfg.train.save_every_iters
        if every and (iteration + 1) % every == 0 and batch_idx + 1 < t.iters:
            t.checkpoint(epoch, batch_idx + 1)  # within the epoch; its end saves anyway
        if collapse is not None and t.cfg.train.on_collapse != "warn":
            return collapse
        if batch_idx + 1 >= t.iters:  # the plan shortened this epoch
            break
    collapse = t.agree(logger.flush(t.objective.queue_active(epoch), hint))
    if collapse is not None and t.cfg.train.on_collapse != "warn":
        return collapse
    return False


UNREADABLE_BATCHES = 20
"""Batches without two readable images, at the start of an epoch, after which the data is
declared unreadable."""


def _refuse_unreadable_data(t: Trainer, steps: int, batches: int) -> None:
    """Stop, before anything is saved, when no batch of the epoch so far could be trained on
    (every image unreadable), instead of finishing a run that learned nothing."""
    if steps or batches < min(UNREADABLE_BATCHES, t.iters):
        return
    names = ", ".join(t.state.corrupt[-3:])
    raise DataError(
        f"none of the images of the first {batches} batches could be read (e.g. {names}): "
        f"check data.source ({t.cfg.data.source}); no checkpoint was written"
    )
