"""Intra-op threads that follow the machine's load.

On a machine that is not empty, a training step with as many threads as cores can take many
times longer than with fewer: the threads wait for each other, and every one of them waits for
the slowest core, which another job holds. ``ThreadTuner`` times the real training step with each
candidate thread count in turn (a few steps each, the first after a change left out), keeps the
fastest, and times them again when the step slows down by half (another job started) or after a
while (a job ended). Each choice is logged and recorded in ``metrics.jsonl`` (``kind: threads``).

It is used on a CPU when the threads were not fixed (``train.threads=0`` and no
``OMP_NUM_THREADS``) and the run is not asked to be deterministic, from 30 s into the run;
``train.threads=N`` keeps N threads throughout.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

STEPS_EACH = 3
"""Steps timed per candidate (after one step that settles the new count)."""
GIVE_UP = 2.0
"""A candidate whose step (the settling one included) takes this many times the best median
so far is dropped at once: under load, a few steps with too many threads cost more than the
rest of the trial."""
SLOWDOWN = 1.5
"""The median step of the last ``WINDOW`` steps over the chosen one's that starts a new trial."""
WINDOW = 20
START_AFTER_S = 30.0
"""Seconds of training before the first trial: a short run keeps its threads (and its steps
their order of summation)."""
RETRY_AFTER_S = 600.0
"""Seconds after which the candidates are timed again even when nothing slowed down (the
load may have gone, and more threads would be faster)."""


def candidates_for(cores: int) -> list[int]:
    """The thread counts worth timing on ``cores`` cores: all of them, half, and one."""
    return sorted({cores, max(1, cores // 2), 1}, reverse=True)


class ThreadTuner:
    """Chooses the intra-op thread count from the timed training steps (see the module)."""

    def __init__(
        self,
        candidates: list[int],
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not candidates:
            raise ValueError("no candidate thread counts")
        self.candidates = sorted(set(candidates), reverse=True)
        self._set_threads, self._clock = set_threads, clock
        self.threads = self.candidates[0]
        self.reference: float | None = None
        """The median step of the chosen count when it was chosen."""
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._trial: dict[int, list[float]] = {}
        self._left: list[int] = []
        self._settle = 0
        self._started = clock()
        self._chosen_at = self._started
        self._why = ""
        self._waiting = True

    @property
    def trying(self) -> bool:
        return bool(self._left)

    def _use(self, n: int) -> None:
        self.threads = n
        self._set_threads(n)
        self._settle = 1

    def _start_trial(self, why: str) -> None:
        # the fewest threads first: the cheapest step under load, and the reference that
        # lets a slow candidate be dropped after one step
        self._trial, self._left, self._why = {}, sorted(self.candidates), why
        self._use(self._left[0])

    def step_done(self, seconds: float) -> dict[str, Any] | None:
        """After a training step of ``seconds``: the record of a new choice when one was made
        (the threads are already set), else None."""
        if self._waiting:
            if self._clock() - self._started >= START_AFTER_S:
                self._waiting = False
                self._start_trial("the first steps")
            return None
        others = [statistics.median(t) for n, t in self._trial.items() if n != self.threads]
        if self._left and others and seconds > GIVE_UP * min(others):
            self._trial[self.threads] = [seconds]  # far slower: no more steps for it
            return self._next_candidate()
        if self._settle:
            self._settle -= 1
            return None
        if self._left:
            return self._timed(seconds)
        self._recent.append(seconds)
        assert self.reference is not None
        if len(self._recent) == WINDOW and statistics.median(self._recent) > (
            SLOWDOWN * self.reference
        ):
            self._start_trial(
                f"steps slowed to {statistics.median(self._recent):.3f} s from "
                f"{self.reference:.3f} s"
            )
        elif self._clock() - self._chosen_at > RETRY_AFTER_S:
            self._start_trial(f"{RETRY_AFTER_S / 60:.0f} minutes since the last choice")
        return None

    def _timed(self, seconds: float) -> dict[str, Any] | None:
        times = self._trial.setdefault(self.threads, [])
        times.append(seconds)
        if len(times) < STEPS_EACH:
            return None
        return self._next_candidate()

    def _next_candidate(self) -> dict[str, Any] | None:
        self._left.pop(0)
        if self._left:
            self._use(self._left[0])
            return None
        medians = {n: statistics.median(t) for n, t in self._trial.items()}
        best = min(medians, key=lambda n: medians[n])
        self._use(best)
        self._settle = 0
        self.reference, self._chosen_at = medians[best], self._clock()
        self._recent.clear()
        return {
            "threads": best,
            "why": self._why,
            "step_seconds": {str(n): round(m, 4) for n, m in medians.items()},
        }
