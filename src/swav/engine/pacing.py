"""A run with a time budget (``train.time_budget``) keeps to it: the plan (epochs, iterations
per epoch) made from a few timed steps, checked against the first real steps and after every
epoch, and the schedules laid out again over each new number of epochs."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch

from swav.config import Config, resolve_run_length
from swav.data.loader import EpochSampler
from swav.engine.budget import CALIBRATION, MEASURE_STEPS, TimeBudget
from swav.engine.optim import set_lr
from swav.engine.runtime import rng_state, set_rng_state
from swav.engine.trainer import Trainer, batch_to_device, run_lr_schedule, training_step
from swav.run_length import absolute, duration

log = logging.getLogger(__name__)


def run_budget(cfg: Config, saved: dict[str, Any] | None, started: float) -> TimeBudget | None:
    """The run's time budget (None without one), continuing the one a checkpoint carries."""
    seconds = duration(cfg.train.time_budget)
    if not seconds:
        return None
    budget = TimeBudget.resumed(seconds, saved.get("budget") if saved else None)
    budget.start()
    budget.started = started
    return budget


def first_plan(t: Trainer, budget: TimeBudget) -> None:
    """A time budget's plan: the one the checkpoint kept, or one made from a few steps timed
    now (the main process's, on every process)."""
    if budget.epochs is None:
        plan = t.agree(budget.first_plan(_time_a_step(t), t.sampler.batches))
        budget.epochs, budget.iters_per_epoch = plan
    _follow(t, budget.epochs, budget.iters_per_epoch)


def calibrate(t: Trainer, epoch: int, steps: int) -> None:
    """After the ``steps``-th step of ``epoch``: in a new run's first epoch, the plan made
    again from the real pace when it differs from the timed one (agreed by every process at
    the end of the calibration window only)."""
    budget = t.budget
    if budget is None or not budget.calibrating(epoch):
        return
    plan = budget.step_done(steps)
    if steps == CALIBRATION[1]:
        plan = t.agree(plan)
        if plan is not None:
            _follow(t, *plan)


def after_epoch(t: Trainer, epochs_done: int) -> None:
    """At an epoch end: follow the budget's new number of epochs, if it made one (the main
    process's, on every process)."""
    if t.budget is None or t.budget.epochs is None:
        return
    epochs = t.agree(t.budget.after_epoch(epochs_done))
    if epochs is not None:
        t.budget.epochs = epochs
        replan(t, epochs)


def _follow(t: Trainer, epochs: int, iters_per_epoch: int | None) -> None:
    """Follow a plan: the epoch length (listed data), then the schedules over ``epochs``."""
    assert t.budget is not None
    t.budget.epochs, t.budget.iters_per_epoch = epochs, iters_per_epoch
    if iters_per_epoch and isinstance(t.sampler, EpochSampler):
        t.sampler.batches = t.state.iters_per_epoch = iters_per_epoch
        if t.logger is not None:
            t.logger.iters = iters_per_epoch
    replan(t, epochs)


def replan(t: Trainer, epochs: int) -> None:
    """Lay the run out over ``epochs`` epochs: the learning-rate schedule, and the schedules
    given as shares of the run (warm-up, queue start, freezing, collapse patience)."""
    given = t.state.cfg
    given = dataclasses.replace(given, train=dataclasses.replace(given.train, epochs=epochs))
    t.cfg, notes = resolve_run_length(given, t.iters)
    for note in notes if t.dist.is_main else []:
        log.info("schedule: %s", note)
    t.schedule = run_lr_schedule(t.cfg, t.dist.world_size, t.iters)
    t.base_swav = copy.deepcopy(t.cfg.swav)
    t.apply_adjustments()
    if t.logger is not None:
        t.logger.epochs = epochs
        t.logger.monitor.patience = int(absolute(t.cfg.train.collapse_patience, "patience"))


def _time_a_step(t: Trainer) -> float:
    """Seconds of one training step, timed on synthetic crops of the run's shapes at a
    learning rate of 0; everything the steps changed (weights, BatchNorm statistics, the
    optimiser, the objective's state, the random states) is put back."""
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
        start = time.perf_counter()
        step = training_step(t, batch, 0, t.state.epoch, None, 0)
        float(step.loss.detach())  # waits for the device
        times.append(time.perf_counter() - start)
    t.core.load_state_dict(model)
    t.state.optimizer.load_state_dict(optimizer)
    t.objective.load_state_dict(objective)
    set_rng_state(rng)
    return sorted(times[2:])[len(times[2:]) // 2]  # the median of the timed steps
