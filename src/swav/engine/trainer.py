"""What one training process works with (``Trainer``), how it is built (``build_trainer``),
and one training step on a batch (``training_step``, ``batch_to_device``).

The trainer knows the method only as a ``Method`` (``swav.engine.method``): the objective it
built and the hooks the loop calls."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from swav.config import Config, resolve_run_length
from swav.data.loader import EpochSampler, decode_batch
from swav.data.multicrop import MultiCrop
from swav.data.stream import StreamDataset
from swav.engine.budget import TimeBudget
from swav.engine.distributed import DistInfo, any_rank
from swav.engine.global_bn import bn_group, convert_global_bn
from swav.engine.health import CollapseMonitor
from swav.engine.logger import TrainLogger
from swav.engine.method import Method, ObjectiveInputs
from swav.engine.optim import build_optimizer, lr_schedule
from swav.engine.run_dir import RunDir
from swav.engine.runtime import configure_determinism, resolve_precision, seed_everything
from swav.engine.state import RunState
from swav.engine.threads import ThreadTuner, candidates_for
from swav.engine.train_data import build_data
from swav.model.config import build_from_config
from swav.model.swav import SwAV
from swav.objective.settings import SwAVConfig
from swav.objective.swav_loss import Objective, SwAVStep
from swav.run_length import absolute

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(kw_only=True)
class Trainer:
    """What one training process works with, built once by ``build_trainer``."""

    cfg: Config
    """The run's configuration with the schedule settings resolved for its length (the run
    state keeps the configuration as given, which is what is saved)."""
    dist: DistInfo
    device: torch.device
    run: RunDir
    method: Method
    core: SwAV
    model: nn.Module
    forward: Any
    objective: Objective
    base_swav: SwAVConfig
    """The objective settings as resolved for the run, before any recovery changed them
    (``objective.cfg`` is the live copy recoveries adjust)."""
    state: RunState
    schedule: np.ndarray
    sampler: EpochSampler | StreamDataset
    loader: DataLoader
    transform: MultiCrop
    autocast: Any
    logger: TrainLogger | None = None
    budget: TimeBudget | None = None
    """The run's time budget (``train.time_budget``), None without one."""
    stop_signal: int | None = None
    """The signal that stopped the run (on every rank, whichever rank received it)."""
    threads: ThreadTuner | None = None
    """Intra-op threads chosen from the timed steps (None when they were fixed)."""
    _last_step: float = 0.0

    def step_timed(self, iteration: int, first: bool) -> None:
        """After each training step (``first``: of this epoch): the thread count follows the
        machine's load."""
        now = time.perf_counter()
        took, self._last_step = now - self._last_step, now
        if self.threads is None or first:
            return
        choice = self.threads.step_done(took)
        if choice is not None:
            if self.dist.is_main:
                log.info(
                    "threads: %d (%s; median step by thread count: %s s)",
                    choice["threads"],
                    choice["why"],
                    choice["step_seconds"],
                )
            self.record("threads", iteration=iteration, **choice)

    @property
    def iters(self) -> int:
        return self.sampler.batches

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def checkpoint(self, epoch: int, next_batch: int) -> None:
        if next_batch == 0:  # a new epoch starts on a batch boundary
            self.state.sample_offset = 0
        self.state.epoch, self.state.next_batch = epoch, next_batch
        self.state.save(self.run.checkpoint)

    def apply_adjustments(self) -> None:
        """Put the settings changed by recoveries (kept in the run state) into the objective's
        live settings; the run's configuration is never changed."""
        adj, base, live = self.state.adjustments, self.base_swav, self.objective.cfg
        live.epsilon = adj.epsilon if adj.epsilon is not None else base.epsilon
        live.freeze_prototypes_niters = max(frozen_iterations(base), adj.freeze_until)
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

    def to_device(self, crops: list[Any], indices: Tensor) -> tuple[list[Tensor] | None, Tensor]:
        return batch_to_device(self, crops, indices)

    def record(self, kind: str, **values: Any) -> None:
        if self.logger is not None:
            self.logger.record(kind, **values)


def build_trainer(
    cfg: Config, info: DistInfo, device: torch.device, run: RunDir, method: Method
) -> Trainer:
    """Data, model, objective, optimiser and schedule of one training process."""
    given = cfg
    data = build_data(cfg, info, device)  # checks the settings against the data's size
    configure_determinism(cfg.train.deterministic, device)
    seed_everything(cfg.train.seed)

    core = build_from_config(cfg.model).to(device)
    if cfg.train.channels_last:
        core = core.to(memory_format=torch.channels_last)
    cfg, notes = resolve_run_length(given, data.sampler.batches)
    for note in notes if info.is_main else []:
        log.info("schedule: %s", note)
    schedule = run_lr_schedule(cfg, info.world_size, data.sampler.batches)
    batch_note = lr_batch_scale(cfg, info.world_size)[1]
    if batch_note and info.is_main:
        log.warning("%s", batch_note)
    o = cfg.optim
    optimizer = build_optimizer(
        core,
        o.optimizer,
        float(schedule[0]),
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        eta=o.lars_eta,
        exclude_bias_norm=o.lars_exclude_bias_norm,
    )
    amp_dtype = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    live = copy.deepcopy(cfg.swav)  # recoveries change this copy, never the configuration
    given_to_method = ObjectiveInputs(
        cfg=cfg,
        swav=live,
        core=core,
        world_size=info.world_size,
        images=data.size,
        bank_rows=data.sampler.batches * cfg.train.batch_size,
    )
    objective = method.build_objective(given_to_method).to(device)
    state = RunState(
        cfg=given,
        dist=info,
        model=core,
        optimizer=optimizer,
        scaler=scaler,
        iters_per_epoch=data.sampler.batches,
        method=method,
        objective=objective,
    )
    model, forward = _wrap(core, cfg, info, device)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    return Trainer(
        cfg=cfg,
        dist=info,
        device=device,
        run=run,
        method=method,
        core=core,
        model=model,
        forward=forward,
        objective=objective,
        base_swav=copy.deepcopy(cfg.swav),
        state=state,
        schedule=schedule,
        sampler=data.sampler,
        loader=data.loader,
        transform=data.transform,
        autocast=autocast,
        threads=(
            ThreadTuner(candidates_for(data.cores.threads), torch.set_num_threads)
            if data.cores.adaptive and not cfg.train.deterministic
            else None
        ),
    )


def build_logger(t: Trainer, progress: bool) -> TrainLogger:
    """The run's logger (metrics, progress bar) and its collapse monitor."""
    cfg = t.cfg
    monitor = CollapseMonitor(
        t.core.n_prototypes,
        patience=int(absolute(cfg.train.collapse_patience, "train.collapse_patience")),
        start_iteration=frozen_iterations(t.objective.cfg),
        embedding_dim=t.core.embedding_dim,
    )
    return TrainLogger(
        t.run,
        enabled=t.dist.is_main,
        n_prototypes=t.core.n_prototypes,
        epochs=cfg.train.epochs,
        iters_per_epoch=t.iters,
        log_every=cfg.train.log_every,
        monitor=monitor,
        progress=progress,
        device=t.device,
        distributed=t.dist.enabled,
        loggers=list(cfg.train.loggers),
        config=cfg.to_dict(),
    )


def frozen_iterations(swav: SwAVConfig) -> int:
    """Iterations the prototypes stay frozen (resolved for the run)."""
    return int(absolute(swav.freeze_prototypes_niters, "swav.freeze_prototypes_niters"))


def lr_batch_scale(cfg: Config, world_size: int) -> tuple[float, str | None]:
    """The factor on the configured learning rates for this world size, and a line for the
    log when the global batch is not the one they were set for."""
    actual = cfg.train.global_batch_of(world_size)
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


def run_lr_schedule(cfg: Config, world_size: int, iters: int) -> np.ndarray:
    """The learning rate of every iteration of the run (scaled for the global batch)."""
    o = cfg.optim
    scale, _ = lr_batch_scale(cfg, world_size)
    return lr_schedule(
        o.base_lr * scale,
        o.final_lr * scale,
        cfg.train.epochs,
        iters,
        warmup_epochs=absolute(o.warmup_epochs, "optim.warmup_epochs"),
        start_warmup=o.start_warmup * scale,
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
    epoch) feed a method's memory of the images (the clustering methods' bank)."""
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
