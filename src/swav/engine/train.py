"""The pretraining loop: multi-crop batches -> SwAV forward -> ``SwAVLoss`` (queue, Sinkhorn
codes, swapped prediction) -> optimiser step, with checkpoints, resume, metrics and health checks.

``pretrain`` reads top to bottom: settle the device, refuse a mismatched run directory, open the
data, build the model, objective and optimiser, resume, then run ``train_one_epoch`` until done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from swav.config import Config, resolve_run_length, save_config, validate
from swav.data.images import DataError
from swav.data.loader import EpochSampler, decode_batch
from swav.data.multicrop import MultiCrop
from swav.data.stream import StreamDataset
from swav.engine.budget import MEASURE_STEPS, TimeBudget
from swav.engine.checkpoint import keep_copy, safe_load
from swav.engine.clustering import fill_bank, make_objective, start_epoch
from swav.engine.curves import plot_loss_curve
from swav.engine.distributed import (
    DistInfo,
    PeerLostError,
    any_rank,
    init_distributed,
    is_peer_failure,
    shutdown,
)
from swav.engine.global_bn import bn_group, convert_global_bn
from swav.engine.health import COLLAPSE_ADVICE, Collapse, CollapseError, CollapseMonitor
from swav.engine.logger import TrainLogger
from swav.engine.optim import build_optimizer, lr_schedule, set_lr
from swav.engine.recovery import Adjustments, plan_recovery
from swav.engine.run_dir import (
    RunDir,
    RunLock,
    RunLockedError,
    check_writable_dir,
    describe_holder,
)
from swav.engine.runtime import (
    StopFlag,
    configure_determinism,
    resolve_device,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
)
from swav.engine.state import ConfigMismatchError, RunState, load_saved_weights, saved_state
from swav.engine.train_data import build_data
from swav.errors import ConfigError
from swav.model.config import build_from_config
from swav.model.swav import SwAV
from swav.model.warm_start import warm_start
from swav.objective.swav_loss import Objective, SwAVConfig, SwAVStep
from swav.run_length import absolute, duration

log = logging.getLogger(__name__)
T = TypeVar("T")

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


@dataclass
class Trainer:
    """What one training process works with, built once by ``build_trainer``."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    run: RunDir
    core: SwAV
    model: nn.Module
    forward: Any
    objective: Objective
    state: RunState
    schedule: np.ndarray
    sampler: EpochSampler | StreamDataset
    loader: DataLoader
    transform: MultiCrop
    autocast: Any
    base_swav: SwAVConfig
    logger: TrainLogger | None = None
    budget: TimeBudget | None = None
    """The run's time budget (``train.time_budget``), None without one."""
    stop_signal: int | None = None
    """The signal that stopped the run (on every rank, whichever rank received it)."""

    @property
    def iters(self) -> int:
        return self.sampler.batches

    def checkpoint(self, epoch: int, next_batch: int) -> None:
        if next_batch == 0:  # a new epoch starts on a batch boundary
            self.state.sample_offset = 0
        self.state.epoch, self.state.next_batch = epoch, next_batch
        self.state.save(self.run.checkpoint)

    def apply_adjustments(self) -> None:
        """Put the settings changed by recoveries into the objective."""
        adj, base, live = self.state.adjustments, self.base_swav, self.objective.cfg
        live.epsilon = adj.epsilon if adj.epsilon is not None else base.epsilon
        live.freeze_prototypes_niters = max(_frozen_iterations(base), adj.freeze_until)
        queue = adj.queue_start if adj.queue_start is not None else base.epoch_queue_starts
        live.epoch_queue_starts = queue

    @property
    def lr_scale(self) -> float:
        return self.state.adjustments.lr_scale

    def agree(self, value: T) -> T:
        """The main process's value (a verdict, a plan), on every process."""
        if not self.dist.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def stop_requested(self, flag: bool) -> bool:
        """Whether any process was asked to stop (a collective in distributed runs)."""
        return any_rank(flag, self.device) if self.dist.enabled else flag


def pretrain(
    cfg: Config,
    allow_config_change: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    initial_weights: Mapping[str, Tensor] | None = None,
) -> TrainResult:
    """Train SwAV as configured, resuming from the run directory's checkpoint when it exists.

    Args:
        cfg: the configuration (validated again here, with the dataset size and world size).
        allow_config_change: resume even if the checkpoint was written with other settings.
        progress: show a progress bar (main process only).
        stop_after_epoch: stop (as if interrupted) once this many epochs are done.
        initial_weights: the weights ``model.init`` names, for a new run (``swav.pretrain``
            reads them from the name or file; see ``swav.interop.checkpoints.initial_weights``).
    """
    options = RunOptions(
        allow_config_change, progress, stop_after_epoch, time.monotonic(), initial_weights
    )
    validate(cfg)
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
    run = RunDir.of(cfg.run_dir)
    check_writable_dir(run.path)
    with _locked(run, info):
        return _train_in(run, cfg, info, device, options)


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
    run: RunDir, cfg: Config, info: DistInfo, device: torch.device, options: RunOptions
) -> TrainResult:
    saved = saved_state(run, cfg, options.allow_config_change)
    budget = _budget(cfg, saved, options.started)
    planned = budget.epochs if budget is not None and budget.epochs else cfg.train.epochs
    if saved is not None and saved["epoch"] >= planned:
        return _finished(run, cfg, saved, info, device)  # before any data is listed

    # -- model, objective, optimiser, data
    t = build_trainer(cfg, info, device, run)
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
        _tidy_after_kill(run, t.state.epoch * t.iters + t.state.next_batch)

    # -- the run directory and the logger
    if info.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    t.logger = _build_logger(t, options.progress)
    if budget is not None:  # a resumed run follows the plan it made; a new one makes it
        _first_plan(t, budget)
    fill_bank(t)  # clustering methods: the memory bank's first contents
    if cfg.train.on_collapse == "recover" and not run.healthy_checkpoint.exists():
        t.state.save(run.healthy_checkpoint)  # where a collapse in the first epoch rewinds to

    # -- the epochs
    try:
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
        run.path,
        done,
        done * t.iters,
        t.logger.epoch_loss if math.isfinite(t.logger.epoch_loss) else t.logger.last_loss,
        interrupted,
        t.state.corrupt,
        t.core,
        healthy,
        recoveries,
        stop_signal=t.stop_signal,
    )


def _budget(cfg: Config, saved: dict[str, Any] | None, started: float) -> TimeBudget | None:
    """The run's time budget (None without one), continuing the one a checkpoint carries."""
    seconds = duration(cfg.train.time_budget)
    if not seconds:
        return None
    budget = TimeBudget.resumed(seconds, saved.get("budget") if saved else None)
    budget.start()
    budget.started = started
    return budget


def _first_plan(t: Trainer, budget: TimeBudget) -> None:
    """A time budget's plan: the one the checkpoint kept, or one made from a few steps timed
    now (the main process's, on every process)."""
    if budget.epochs is None:
        plan = t.agree(budget.first_plan(_time_a_step(t), t.sampler.batches))
        budget.epochs, budget.iters_per_epoch = plan
    if budget.iters_per_epoch and isinstance(t.sampler, EpochSampler):
        t.sampler.batches = t.state.iters_per_epoch = budget.iters_per_epoch
        assert t.logger is not None
        t.logger.iters = budget.iters_per_epoch
    replan(t, budget.epochs)


def _time_a_step(t: Trainer) -> float:
    """Seconds of one training step, timed on synthetic crops of the run's shapes at a
    learning rate of 0; everything the steps changed (weights, BatchNorm statistics, the
    optimiser, the queue, the random states) is put back."""
    import copy
    import time as clock

    model = {k: v.clone() for k, v in t.core.state_dict().items()}
    optimizer = copy.deepcopy(t.state.optimizer.state_dict())
    objective = {k: v.clone() for k, v in t.objective.state_dict().items()}
    rng = rng_state()
    set_lr(t.state.optimizer, 0.0)
    mc, bs = t.cfg.multicrop, t.cfg.train.batch_size
    shapes = [s for n, s in zip(mc.n_crops, mc.sizes) for _ in range(n)]
    crops = [torch.randint(0, 256, (bs, 3, s, s), dtype=torch.uint8) for s in shapes]
    batch, _ = batch_to_device(t, crops, torch.arange(bs))
    assert batch is not None
    times = []
    for _ in range(2 + MEASURE_STEPS):
        start = clock.perf_counter()
        step = training_step(t, batch, 0, t.state.epoch, None, 0)
        float(step.loss.detach())  # waits for the device
        times.append(clock.perf_counter() - start)
    t.core.load_state_dict(model)
    t.state.optimizer.load_state_dict(optimizer)
    t.objective.load_state_dict(objective)
    set_rng_state(rng)
    return sorted(times[2:])[len(times[2:]) // 2]  # the median of the timed steps


def replan(t: Trainer, epochs: int) -> None:
    """Lay the run out over ``epochs`` epochs: the learning-rate schedule, and the schedules
    given as shares of the run (warm-up, queue start, freezing, collapse patience)."""
    given = t.state.cfg
    given = dataclasses.replace(given, train=dataclasses.replace(given.train, epochs=epochs))
    t.cfg, notes = resolve_run_length(given, t.iters)
    for note in notes if t.dist.is_main else []:
        log.info("schedule: %s", note)
    t.schedule = _lr_schedule(t.cfg, t.dist.world_size, t.iters)
    t.base_swav = dataclasses.replace(t.cfg.swav)
    t.apply_adjustments()
    if t.logger is not None:
        t.logger.epochs = epochs
        t.logger.monitor.patience = int(absolute(t.cfg.train.collapse_patience, "patience"))


def _tidy_after_kill(run: RunDir, iteration: int) -> None:
    """What a killed run leaves behind: temporary files of a save, and records written after
    its last checkpoint (the resumed run writes them again)."""
    for p in run.remove_stale_temporaries():
        log.info("removed %s, left by a save that was cut short", p)
    dropped = run.trim_metrics(iteration)
    if dropped:
        log.info(
            "metrics.jsonl: %d records after iteration %d dropped (written again)",
            dropped,
            iteration,
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
        run.path,
        saved["epoch"],
        int(saved["iteration"]),
        float(last.get("loss", float("nan"))),
        False,
        list(saved.get("corrupt", [])),
        model,
        bool(last.get("healthy", True)),
        Adjustments.from_state(saved.get("recovery")).recoveries,
        already_finished=True,
    )


def build_trainer(cfg: Config, info: DistInfo, device: torch.device, run: RunDir) -> Trainer:
    """Data, model, objective, optimiser and schedule of one training process. The trainer's
    ``cfg`` has the schedule settings resolved for this run's length; the run state keeps the
    configuration as given (saved with the checkpoint)."""
    given = cfg
    data = build_data(cfg, info, device)  # validates the settings against the data's size
    sampler = data.sampler
    configure_determinism(cfg.train.deterministic, device)
    seed_everything(cfg.train.seed)

    core = build_from_config(cfg.model).to(device)
    if cfg.train.channels_last:
        core = core.to(memory_format=torch.channels_last)
    bs = cfg.train.batch_size
    cfg, notes = resolve_run_length(given, sampler.batches)
    for note in notes if info.is_main else []:
        log.info("schedule: %s", note)
    schedule = _lr_schedule(cfg, info.world_size, sampler.batches)
    batch_note = lr_batch_scale(cfg, info.world_size)[1]
    if batch_note and info.is_main:
        log.warning("%s", batch_note)
    o = cfg.optim
    optimizer = build_optimizer(
        core,
        o.optimizer,
        float(schedule[0]),
        o.momentum,
        o.weight_decay,
        o.lars_eta,
        o.lars_exclude_bias_norm,
    )
    amp_dtype = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    objective = make_objective(cfg, core, info, data.size, sampler.batches * bs).to(device)
    state = RunState(
        given, info, core, optimizer, scaler, objective.queue, sampler.batches, objective=objective
    )
    model, forward = _wrap(core, cfg, info, device)

    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    return Trainer(
        cfg,
        info,
        device,
        run,
        core,
        model,
        forward,
        objective,
        state,
        schedule,
        sampler,
        data.loader,
        data.transform,
        autocast,
        dataclasses.replace(cfg.swav),
    )


def _frozen_iterations(swav: SwAVConfig) -> int:
    """Iterations the prototypes stay frozen (resolved for the run)."""
    return int(absolute(swav.freeze_prototypes_niters, "swav.freeze_prototypes_niters"))


def lr_batch_scale(cfg: Config, world_size: int) -> tuple[float, str | None]:
    """The factor on the configured learning rates for this world size, and a line for the
    log when the global batch is not the one they were set for."""
    actual = cfg.train.batch_size * world_size
    if cfg.optim.scale_lr:
        return actual / 256, None
    stated = cfg.train.global_batch
    if not stated or stated == actual:
        return 1.0, None
    factor = actual / stated
    return factor, (
        f"global batch {actual} ({world_size} x {cfg.train.batch_size}) instead of the "
        f"{stated} the learning rate was set for: optim.base_lr {cfg.optim.base_lr:g} -> "
        f"{cfg.optim.base_lr * factor:g} (linear scaling; train.global_batch={actual} keeps "
        "it as given)"
    )


def _lr_schedule(cfg: Config, world_size: int, iters: int) -> np.ndarray:
    o = cfg.optim
    scale, _ = lr_batch_scale(cfg, world_size)
    return lr_schedule(
        o.base_lr * scale,
        o.final_lr * scale,
        cfg.train.epochs,
        iters,
        absolute(o.warmup_epochs, "optim.warmup_epochs"),
        o.start_warmup * scale,
    )


def _wrap(core: SwAV, cfg: Config, info: DistInfo, device: torch.device) -> tuple[nn.Module, Any]:
    """(the model the loop calls, its forward): DDP (with SyncBatchNorm on CUDA) in
    distributed runs, compiled when asked."""
    model: nn.Module = core
    if info.enabled:
        if cfg.train.sync_bn:
            group = bn_group(cfg.train.sync_bn_group)
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
            else:  # Gloo: the same statistics with plain collectives
                model = convert_global_bn(model, group)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward: Any = torch.compile(model) if cfg.train.compile else model
    return model, forward


def _build_logger(t: Trainer, progress: bool) -> TrainLogger:
    cfg = t.cfg
    monitor = CollapseMonitor(
        t.core.n_prototypes,
        int(absolute(cfg.train.collapse_patience, "train.collapse_patience")),
        _frozen_iterations(t.objective.cfg),
        t.core.embedding_dim,
    )
    return TrainLogger(
        t.run,
        t.dist.is_main,
        t.core.n_prototypes,
        cfg.train.epochs,
        t.iters,
        cfg.train.log_every,
        monitor,
        progress,
        t.device,
        distributed=t.dist.enabled,
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
                _after_collapse(t, outcome, epoch)
                epoch = t.state.epoch
                continue
            if outcome:
                return True
            t.logger.end_epoch(t.objective.queue_active(epoch), len(t.state.corrupt))
            if t.budget is not None and t.budget.epochs is not None:
                _plan(t, t.budget.after_epoch(epoch + 1))
            t.checkpoint(epoch + 1, 0)
            _keep_copies(t, epoch + 1)
            epoch += 1
            if t.stop_requested(stop.set):
                t.stop_signal = stop.signum or int(signal.SIGTERM)
                return epoch < t.cfg.train.epochs
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return epoch < t.cfg.train.epochs
    return False


def _follow(t: Trainer, plan: tuple[int, int] | None) -> None:
    """Follow a time budget's new plan (epochs, iterations per epoch) made in the first epoch."""
    if plan is None:
        return
    assert t.budget is not None and t.logger is not None
    t.budget.epochs, t.budget.iters_per_epoch = plan
    if isinstance(t.sampler, EpochSampler):
        t.sampler.batches = t.state.iters_per_epoch = t.logger.iters = plan[1]
    replan(t, plan[0])


def _plan(t: Trainer, epochs: int | None) -> None:
    """Follow a time budget's plan (the main process's, on every process)."""
    epochs = t.agree(epochs)
    if epochs is not None:
        assert t.budget is not None
        t.budget.epochs = epochs
        replan(t, epochs)


def _keep_copies(t: Trainer, epochs_done: int) -> None:
    """The periodic copy (``train.save_every``) and, while the run is healthy, the copy a
    collapse would rewind to."""
    assert t.logger is not None
    every = t.cfg.train.save_every
    if t.dist.is_main and every and epochs_done % every == 0:
        keep_copy(t.run.checkpoint, t.run.periodic_checkpoint(epochs_done))
    recover = t.cfg.train.on_collapse == "recover"
    if t.dist.is_main and recover and t.logger.monitor.healthy:
        keep_copy(t.run.checkpoint, t.run.healthy_checkpoint)


def _after_collapse(t: Trainer, collapse: Collapse, epoch: int) -> None:
    """``train.on_collapse`` = stop: raise; recover: rewind to the last healthy checkpoint and
    change what the evidence points to (each change logged and recorded)."""
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
    fill_bank(t)  # a healthy state saved before the bank was filled: fill it again
    restart = t.state.epoch * t.iters + t.state.next_batch
    adjusted, changes = plan_recovery(
        collapse,
        current,
        t.objective.cfg.epsilon,
        _frozen_iterations(t.base_swav),
        restart,
        epoch,
        t.cfg.train.epochs,
        t.iters,
        queue_waiting=t.objective.queue is not None and not t.objective.queue_in_use(epoch),
    )
    t.state.adjustments = adjusted
    if "queue" in changes and t.objective.queue is not None:
        t.objective.queue.reset()
    t.apply_adjustments()
    t.logger.monitor.restart(_frozen_iterations(t.objective.cfg))
    for what, change in changes.items():
        log.warning("recovering from collapse: %s %s", what, change)
    t.logger.record("recovery", iteration=collapse.iteration, rewound_to=restart, **changes)


def train_one_epoch(t: Trainer, epoch: int, first_batch: int, stop: StopFlag) -> bool | Collapse:
    """One pass over this process's share of the data, from ``first_batch`` on.

    Returns True when a stop signal ended the epoch early (a checkpoint is then written at the
    next batch, so the run resumes there), the collapse when the health signals declared one
    and ``train.on_collapse`` is not ``warn``, else False."""
    assert t.logger is not None
    logger, hint = t.logger, str(t.run.checkpoint)
    start_epoch(t, epoch)  # clustering methods: the epoch's pseudo-labels
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
        if t.budget is not None and t.budget.calibrating(epoch):
            _follow(t, t.agree(t.budget.step_done(steps)))
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


def training_step(
    t: Trainer,
    crops: list[Tensor],
    iteration: int,
    epoch: int,
    indices: Tensor | None = None,
    position: int = 0,
) -> SwAVStep:
    """Forward over all crops, the objective's loss, backward, prototype freezing, optimiser
    step. ``indices`` (the images' dataset indices) and ``position`` (their first row in this
    epoch) feed the memory bank of the clustering methods."""
    with t.autocast:
        out = t.forward(crops)
    step = t.objective(out, t.core.prototypes, crops[0].shape[0], epoch, indices, position)
    opt, scaler = t.state.optimizer, t.state.scaler
    opt.zero_grad(set_to_none=True)
    scaler.scale(step.loss).backward()
    t.objective.freeze_prototypes(t.core.prototypes, iteration)
    scaler.step(opt)
    scaler.update()
    return step


def batch_to_device(
    t: Trainer, crops: list[Any], indices: Tensor
) -> tuple[list[Tensor] | None, Tensor]:
    """The batch's crops on the training device and the dataset indices of their images
    (with ``multicrop.on_device``: cropped there, from images the workers decoded or JPEGs
    decoded there); None when fewer than two images are left."""
    if crops and t.cfg.multicrop.on_device:
        images, kept, failed = decode_batch(crops, t.device)
        if failed:
            t.state.corrupt += failed
            log.warning("skipped %d image(s) that could not be decoded: %s", len(failed), failed)
        generators = [crops[i].generator() for i in kept]
        crops = t.transform.batch(images, generators, t.device) if images else []
        indices = indices[kept]
    if not crops or crops[0].shape[0] < 2:
        return None, indices
    fmt = torch.channels_last if t.cfg.train.channels_last else torch.preserve_format
    # uint8 crops are moved (a quarter of the bytes) and then normalised on the device; the
    # float conversion keeps the memory format
    moved = [c.to(t.device, non_blocking=True, memory_format=fmt) for c in crops]
    return [t.transform.normalize(c) for c in moved], indices
