"""A run sized to the time it is given (``train.time_budget``).

The run measures its step in its first iterations and sets the number of epochs to fit the
budget; the warm-up, the queue start, the prototype freezing and the collapse patience given
as shares of the run follow (``swav.config.resolve_run_length``). At each epoch end it compares
the time it has left with what the remaining epochs take at the measured pace and plans again
when they drift apart by more than ``REPLAN_DRIFT`` of the budget (another job on the machine,
a slower part of the data). Should an epoch still overrun, the run saves and stops once the
budget plus ``HARD_STOP_GRACE`` has passed. The plan and the time spent are kept in the
checkpoint, so that a resumed run continues the budget it started with, not a new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MEASURE_AFTER = 3
"""Iterations left out of the first measurement (allocations, loader workers starting)."""
MEASURE_STEPS = 20
"""Iterations measured before the first plan (fewer when the first epoch is shorter)."""
REPLAN_DRIFT = 0.02
"""Drift of the projected end, as a share of the budget, that makes the run plan again."""
HARD_STOP_GRACE = 0.03
"""Share of the budget an epoch may overrun before the run saves and stops within it."""
END_SECONDS = 1.5
"""Kept for what follows the last epoch (the last records, the loss curve), at most 5 % of the
budget."""


@dataclass
class TimeBudget:
    """The budget of one run: its length in seconds, the seconds spent by earlier sessions,
    and the planned number of epochs (None until the first measurement)."""

    seconds: float
    spent_before: float = 0.0
    epochs: int | None = None
    started: float = 0.0
    """``time.monotonic()`` when this session began (set by ``start``)."""
    _first_step: tuple[int, float] | None = None
    _epoch_started: float = 0.0
    _epoch_seconds: list[float] | None = None

    def start(self) -> TimeBudget:
        self.started = time.monotonic()
        self._epoch_seconds = []
        return self

    @property
    def spent(self) -> float:
        """Seconds spent on the run so far, earlier sessions included."""
        return self.spent_before + time.monotonic() - self.started

    @property
    def left(self) -> float:
        """Seconds left for training (what follows the last epoch set aside)."""
        return self.seconds - min(END_SECONDS, 0.05 * self.seconds) - self.spent

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps (the time spent up to the checkpoint being written)."""
        return {"seconds": self.seconds, "spent": self.spent, "epochs": self.epochs}

    @classmethod
    def resumed(cls, seconds: float, state: dict[str, Any] | None) -> TimeBudget:
        """The budget of a run resuming from a checkpoint holding ``state`` (None: a new run,
        or one started without a budget)."""
        if not state:
            return cls(seconds)
        if float(state.get("seconds", seconds)) != seconds:
            log.info(
                "time budget: %s now (the run started with %s); %s already spent",
                format_duration(seconds),
                format_duration(float(state["seconds"])),
                format_duration(float(state["spent"])),
            )
        return cls(seconds, float(state.get("spent", 0.0)), state.get("epochs"))

    def first_plan(self, iteration: int, iters_per_epoch: int, epoch: int) -> int | None:
        """After each step of the first epoch measured: the epochs to plan, once the first
        ``MEASURE_STEPS`` steps (or the first epoch's) are timed; else None."""
        now = time.monotonic()
        if self.epochs is not None:
            return None
        if self._first_step is None:
            if iteration % iters_per_epoch >= min(MEASURE_AFTER, iters_per_epoch - 1):
                self._first_step = (iteration, now)
            return None
        first, t0 = self._first_step
        steps = iteration - first
        if steps < min(MEASURE_STEPS, max(1, iters_per_epoch - 1 - MEASURE_AFTER)):
            return None
        per_step = (now - t0) / steps
        steps_left = max(0.0, self.left) / per_step
        done = iteration + 1
        total = (done + steps_left) / iters_per_epoch
        self.epochs = max(epoch + 1, round(total))
        log.info(
            "time budget %s: %.3f s a step measured, %s spent -> %d epochs of %d iterations",
            format_duration(self.seconds),
            per_step,
            format_duration(self.spent),
            self.epochs,
            iters_per_epoch,
        )
        return self.epochs

    def begin_epoch(self) -> None:
        self._epoch_started = time.monotonic()

    def after_epoch(self, epochs_done: int) -> int | None:
        """At an epoch end: a new number of epochs when the projected end drifted from the
        budget, else None."""
        assert self._epoch_seconds is not None and self.epochs is not None
        self._epoch_seconds.append(time.monotonic() - self._epoch_started)
        recent = self._epoch_seconds[-3:]
        per_epoch = sum(recent) / len(recent)
        projected_left = (self.epochs - epochs_done) * per_epoch
        if abs(projected_left - self.left) <= REPLAN_DRIFT * self.seconds:
            return None
        planned = max(epochs_done, epochs_done + round(self.left / per_epoch))
        if planned == self.epochs:
            return None
        log.info(
            "time budget: epochs take %.0f s, %s left -> %d epochs instead of %d",
            per_epoch,
            format_duration(max(0.0, self.left)),
            planned,
            self.epochs,
        )
        self.epochs = planned
        return planned

    def overrun(self) -> bool:
        """True once the budget and its grace are spent (the run saves and stops)."""
        return self.spent > self.seconds * (1 + HARD_STOP_GRACE)


def format_duration(seconds: float) -> str:
    """``1h 05m``, ``12m 30s``, ``45s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
