"""``train.time_budget``: the run times its steps, sets its epochs (and the schedules given as
shares of the run) to fit, ends within 5 % of the budget (a budget of seconds, which holds only a
dozen epochs, within 5 % and one epoch: ``assert_ended_on_time``), and a resumed run continues the
budget it started with."""

import os
import signal
import time

import pytest

from swav.config import ConfigError, build_config
from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import read_metrics
from swav.engine.train import pretrain
from swav.run_length import duration
from tests.conftest import tiny_overrides

BUDGET = 20.0
OVER = {
    "train.time_budget": f"{BUDGET:g}s",
    "train.epochs": 2,  # replaced by the plan
    "train.iters_per_epoch": 4,
    "train.log_every": 3,
    "optim.warmup_epochs": "10%",
    "train.threads": 1,
    # these tests are about the clock: a tiny run that collapses would rewind to its last
    # healthy checkpoint and train those steps again, fewer epochs in the same time
    "train.on_collapse": "warn",
}


def assert_ended_on_time(took: float, budget: float, epochs: int, log: str) -> None:
    """Not past the budget by more than 5 %, and not short of it by more than 5 % and one
    epoch: the plan changes by whole epochs, and a budget of seconds holds only a dozen of them
    (a real budget of minutes holds at least ``MIN_EPOCHS``, and ends within 5 %)."""
    epoch = took / epochs
    assert took - budget <= 0.05 * budget, (took, log[-2000:])
    assert budget - took <= 0.05 * budget + epoch, (took, epoch, log[-2000:])


@pytest.mark.parametrize(
    "text,seconds",
    [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45), (12.5, 12.5)],
)
def test_durations_read_as_people_write_them(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("bad", ["abc", "-5m", "m", "1d", "nan"])
def test_a_budget_that_is_not_a_duration_is_refused(bad, tmp_path):
    with pytest.raises(ConfigError, match="train.time_budget"):
        build_config(None, tiny_overrides(tmp_path, **{"train.time_budget": bad}))


def test_a_run_with_a_budget_ends_within_five_percent_of_it(tmp_path, caplog):
    run = tmp_path / "budget"
    cfg = build_config(None, tiny_overrides(run, **OVER))
    t0 = time.monotonic()
    with caplog.at_level("INFO"):
        r = pretrain(cfg, progress=False)
    took = time.monotonic() - t0
    assert abs(took - BUDGET) <= 0.05 * BUDGET, (took, caplog.text[-2000:])
    assert not r.interrupted and r.epochs_done > 2  # the plan, not train.epochs
    assert "time budget 20s:" in caplog.text and f"-> {r.epochs_done} epochs" in caplog.text
    state = safe_load(run / "checkpoint.pt")
    assert state["budget"]["epochs"] == r.epochs_done == state["epoch"]
    # the warm-up (10 % of the run) and the learning rate schedule follow the planned length
    lrs = [m["lr"] for m in read_metrics(run) if "kind" not in m]
    peak = lrs.index(max(lrs))
    assert abs(peak - 0.1 * len(lrs)) <= 6 + 1
    assert lrs[-1] < 0.05 * max(lrs)  # annealed by the end
    # rerun: finished, nothing to do
    again = pretrain(cfg, progress=False)
    assert again.already_finished and again.epochs_done == r.epochs_done


def test_a_resumed_run_continues_the_budget_it_started_with(tmp_path, monkeypatch):
    import swav.engine.train as train

    run = tmp_path / "resumed"
    cfg = build_config(None, tiny_overrides(run, **OVER))
    real, sent = train.training_step, {"signal": False}

    def stop_later(t, *a, **k):  # a signal some way into the run (time, not steps: the
        # number of steps the budget holds depends on the machine's load)
        if not sent["signal"] and time.monotonic() - t0 > 0.4 * BUDGET:
            sent["signal"] = True
            os.kill(os.getpid(), signal.SIGINT)
        return real(t, *a, **k)

    monkeypatch.setattr(train, "training_step", stop_later)
    t0 = time.monotonic()
    first = pretrain(cfg, progress=False)
    first_took = time.monotonic() - t0
    assert first.interrupted and first_took < BUDGET
    saved = safe_load(run / "checkpoint.pt")["budget"]
    assert saved["seconds"] == BUDGET and 0 < saved["spent"] <= first_took + 0.5
    monkeypatch.setattr(train, "training_step", real)
    time.sleep(1.0)  # time between the sessions does not count
    t0 = time.monotonic()
    second = pretrain(cfg, progress=False)
    second_took = time.monotonic() - t0
    assert not second.interrupted
    total = saved["spent"] + second_took
    assert abs(total - BUDGET) <= 0.05 * BUDGET, (saved, second_took)
    assert safe_load(run / "checkpoint.pt")["budget"]["spent"] == pytest.approx(total, abs=1.0)


def test_a_budget_too_short_for_ten_passes_trains_epochs_of_a_random_part(tmp_path, caplog):
    run = tmp_path / "parts"
    over = {**OVER, "train.iters_per_epoch": 0, "data.limit": 1024, "train.time_budget": "15s"}
    cfg = build_config(None, tiny_overrides(run, **over))
    t0 = time.monotonic()
    with caplog.at_level("INFO"):
        r = pretrain(cfg, progress=False)
    took = time.monotonic() - t0
    assert_ended_on_time(took, 15, r.epochs_done, caplog.text)
    state = safe_load(run / "checkpoint.pt")
    iters = state["budget"]["iters_per_epoch"]
    assert iters < 1024 // 16 and r.epochs_done >= 4  # replanned to the real pace
    assert f"epochs of {iters} iterations (each a random {iters} of the data's 64)" in caplog.text
    steps = [m["iteration"] for m in read_metrics(run) if "kind" not in m]
    assert steps == list(range(r.epochs_done * iters))


def test_a_plan_from_steps_timed_too_fast_is_made_again_from_the_first_real_steps(
    tmp_path, monkeypatch, caplog
):
    """Synthetic crops leave the data out of the timed step; the first real steps correct the
    plan while the first epoch is under way, so that the run still has its epochs and ends on
    time."""
    import swav.engine.pacing as pacing

    timed = pacing._time_a_step
    monkeypatch.setattr(pacing, "_time_a_step", lambda t: timed(t) / 4)  # 4x too fast
    run = tmp_path / "calibrated"
    over = {**OVER, "train.iters_per_epoch": 0, "data.limit": 1024, "train.time_budget": "25s"}
    cfg = build_config(None, tiny_overrides(run, **over))
    t0 = time.monotonic()
    with caplog.at_level("INFO"):
        r = pretrain(cfg, progress=False)
    took = time.monotonic() - t0
    assert_ended_on_time(took, 25, r.epochs_done, caplog.text)
    assert "s a step in the first steps" in caplog.text
    # without the correction: 20 epochs planned, the first taking a third of the budget, then
    # 3 epochs in all
    assert r.epochs_done >= 10
    iters = safe_load(run / "checkpoint.pt")["budget"]["iters_per_epoch"]
    steps = [m["iteration"] for m in read_metrics(run) if "kind" not in m]
    assert steps == list(range(r.epochs_done * iters))  # the first epoch cut to the new length
