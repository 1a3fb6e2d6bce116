"""Threads that follow the load: the tuner times the real step with each candidate count, keeps
the fastest, and times them again when the step slows down or after a while."""

import pytest
import torch

import swav.engine.threads as threads_mod
from swav.config import build_config
from swav.engine.run_dir import read_metrics
from swav.engine.runtime import thread_budget, usable_cores
from swav.engine.threads import RETRY_AFTER_S, START_AFTER_S, WINDOW, ThreadTuner, candidates_for
from swav.engine.train import pretrain
from tests.conftest import tiny_overrides


class Machine:
    """A step's time by thread count, under a load that the test changes."""

    def __init__(self):
        self.now = 0.0
        self.threads = 2  # as the thread budget set them
        self.busy = False

    def clock(self):
        return self.now

    def set_threads(self, n):
        self.threads = n

    def step(self):
        # alone, 2 threads are faster; with another job on a core, 2 threads wait for it
        took = {2: 0.6, 1: 1.0}[self.threads] if not self.busy else {2: 3.0, 1: 1.1}[self.threads]
        self.now += took
        return took


def _run(tuner, machine, steps):
    choices = []
    for _ in range(steps):
        choice = tuner.step_done(machine.step())
        if choice:
            choices.append(choice)
    return choices


def test_the_fastest_count_is_kept_and_followed_when_the_load_changes():
    m = Machine()
    tuner = ThreadTuner([1, 2], m.set_threads, clock=m.clock)
    assert tuner.threads == 2 and not tuner.trying  # the budget's count for the first 30 s
    first = _run(tuner, m, int(START_AFTER_S / 0.6) + 10)
    assert [c["threads"] for c in first] == [2] and m.threads == 2
    assert first[0]["step_seconds"] == {"2": 0.6, "1": 1.0}
    m.busy = True  # another job takes a core: the step slows, a new trial picks 1 thread
    busy = _run(tuner, m, WINDOW + 12)
    assert [c["threads"] for c in busy] == [1] and m.threads == 1
    assert busy[0]["why"].startswith("steps slowed")
    assert busy[0]["step_seconds"] == {"1": 1.1, "2": 3.0}  # 2 threads dropped after one step
    m.busy = False  # the job ends: 1 thread does not slow down, the timed retry finds 2 again
    idle = _run(tuner, m, int(RETRY_AFTER_S / 1.0) + 12)
    assert [c["threads"] for c in idle] == [2] and m.threads == 2
    assert "minutes since the last choice" in idle[0]["why"]


def test_candidates_and_when_the_threads_are_tuned(monkeypatch):
    assert candidates_for(1) == [1] and candidates_for(2) == [2, 1]
    assert candidates_for(8) == [8, 4, 1]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_budget(0, -1, cpu, cores=4).adaptive
    assert not thread_budget(3, -1, cpu, cores=4).adaptive  # train.threads fixes it
    assert not thread_budget(0, -1, cpu, cores=1).adaptive  # nothing to choose
    assert not thread_budget(0, -1, cuda, cores=4).adaptive
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not thread_budget(0, -1, cpu, cores=4).adaptive


@pytest.mark.skipif(usable_cores() < 2, reason="one core: no thread count to choose")
def test_a_run_records_the_threads_it_chose(tmp_path, monkeypatch):
    monkeypatch.setattr(threads_mod, "START_AFTER_S", 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run = tmp_path / "tuned"
    over = {"train.epochs": 3, "train.iters_per_epoch": 6, "data.limit": 256}
    before = torch.get_num_threads()
    pretrain(build_config(None, tiny_overrides(run, **over)), progress=False)
    chosen = [m for m in read_metrics(run) if m.get("kind") == "threads"]
    assert chosen, "no thread choice recorded"
    times = chosen[0]["step_seconds"]
    assert set(times) == {str(n) for n in candidates_for(min(usable_cores(), 2))} or len(times) > 1
    assert chosen[0]["threads"] == int(min(times, key=lambda n: times[n]))
    assert torch.get_num_threads() == before  # the caller's count, as it was
    fixed = tmp_path / "fixed"
    pretrain(build_config(None, tiny_overrides(fixed, **over, **{"train.threads": 1})))
    assert not [m for m in read_metrics(fixed) if m.get("kind") == "threads"]
