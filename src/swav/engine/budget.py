"""A run sized to the time it is given (``train.time_budget``).

Before its first step the run times a few steps on synthetic crops of its own shapes (and
undoes them), then sets the number of epochs to fit the budget: whole passes over the data when
at least ``MIN_EPOCHS`` of them fit, else ``MIN_EPOCHS`` epochs of a random part of the data
each. The warm-up, the queue start, the prototype freezing and the collapse patience given as
shares of the run follow (``swav.config.resolve_run_length``). At each epoch end the run compares
the time it has left with what the remaining epochs take at the measured pace and plans again
when they drift apart by more than ``REPLAN_DRIFT`` of the budget (another job on the machine,
the loading of the data). Should an epoch still overrun, the run saves and stops once the budget
plus ``HARD_STOP_GRACE`` has passed. The plan and the time spent are kept in the checkpoint, so
that a resumed run continues the budget it started with, not a new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MEASURE_STEPS = 3
"""Steps timed before training (on a copy of the state, then undone), after two untimed."""
CALIBRATION = (2, 10)
"""Steps of a new run's first epoch between which the real pace is timed (the data included,
which synthetic crops leave out: on 2 cores a real step of a small network took 2x the timed
one); the plan is made again from it when the two differ by more than ``REPLAN_DRIFT``."""
MIN_EPOCHS = 20
"""Epochs a budget plans at least: fewer whole passes fit, and each epoch is a random part.
An epoch is the unit a plan changes by, so the run ends within half of one (2.5 %)."""
REPLAN_DRIFT = 0.02
"""Drift of the projected end, as a share of the budget, that makes the run plan again."""
HARD_STOP_GRACE = 0.03
"""Share of the budget an epoch may overrun before the run saves and stops within it."""
END_SECONDS = 0.5
"""Kept for what follows the last epoch (the last records, the loss curve), at most 5 % of the
budget."""


@dataclass
class TimeBudget:
    """The budget of one run: its length in seconds, the seconds spent by earlier sessions,
    and the planned number of epochs (None until the first measurement)."""

    seconds: float
    spent_before: float = 0.0
    epochs: int | None = None
    iters_per_epoch: int | None = None
    """Iterations of an epoch (None: the whole data), when the budget affords fewer than
    ``MIN_EPOCHS`` passes."""
    started: float = 0.0
    """``time.monotonic()`` when this session began (set by ``start``)."""
    full_epoch: int = 0
    """Iterations of a whole pass over the data (set by ``first_plan``)."""
    _pace: float = 0.0
    _marks: dict[int, float] = field(default_factory=dict)
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
        return {
            "seconds": self.seconds,
            "spent": self.spent,
            "epochs": self.epochs,
            "iters_per_epoch": self.iters_per_epoch,
        }

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
        spent = float(state.get("spent", 0.0))
        return cls(seconds, spent, state.get("epochs"), state.get("iters_per_epoch"))

    def first_plan(self, per_step: float, full_epoch: int) -> tuple[int, int]:
        """(epochs, iterations per epoch) for a run whose step takes ``per_step`` seconds and
        whose data makes ``full_epoch`` iterations: whole passes over the data when at least
        ``MIN_EPOCHS`` of them fit, else ``MIN_EPOCHS`` epochs each of a fresh random part of
        the data (so that the schedules and the plan's checks keep their resolution)."""
        self.full_epoch, self._pace = full_epoch, per_step
        self._layout(max(1.0, self.left / per_step))
        self._say(f"{per_step:.3f} s a step measured")
        assert self.epochs is not None and self.iters_per_epoch is not None
        return self.epochs, self.iters_per_epoch

    def _layout(self, steps: float, least: int = 1, most: int = 0) -> None:
        """Epochs and their length for ``steps`` steps in all, an epoch ``least`` to ``most``
        (default: a whole pass) iterations long."""
        full = self.full_epoch
        iters = full if steps >= MIN_EPOCHS * full else max(1, int(steps // MIN_EPOCHS))
        iters = max(least, min(iters, most or full))
        self.epochs, self.iters_per_epoch = max(1, round(steps / iters)), iters

    def _say(self, how: str) -> None:
        iters = self.iters_per_epoch
        whole = iters == self.full_epoch
        part = "" if whole else f" (each a random {iters} of the data's {self.full_epoch})"
        spent = format_duration(self.spent)
        plan = f"{self.epochs} epochs of {iters} iterations{part}"
        log.info(
            "time budget %s: %s, %s spent -> %s", format_duration(self.seconds), how, spent, plan
        )

    def calibrating(self, epoch: int) -> bool:
        """Whether the steps of ``epoch`` are timed to check the plan (a new run's first)."""
        return epoch == 0 and self.spent_before == 0 and self._pace > 0

    def step_done(self, steps: int) -> tuple[int, int] | None:
        """In the first epoch of a new run, after its ``steps``-th step: at the end of the
        ``CALIBRATION`` window, a new plan (epochs, iterations per epoch) when the real pace
        differs from the timed one, else None."""
        first, last = CALIBRATION
        if steps in (first, last):
            self._marks[steps] = time.monotonic()
        if steps != last or first not in self._marks:
            return None
        pace = (self._marks[last] - self._marks[first]) / (last - first)
        if abs(pace - self._pace) * (self.left / pace) <= REPLAN_DRIFT * self.seconds:
            return None
        # the epoch under way can be cut short but not lengthened
        self._layout(steps + max(1.0, self.left / pace), steps, self.iters_per_epoch or 0)
        self._say(f"{pace:.3f} s a step in the first steps, {self._pace:.3f} s timed")
        self._pace = pace
        assert self.epochs is not None and self.iters_per_epoch is not None
        return self.epochs, self.iters_per_epoch

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
