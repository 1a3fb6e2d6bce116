import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from swav.config import ConfigError, build_config
from swav.engine.checkpoint import safe_load
from swav.engine.health import NonFiniteLossError
from swav.engine.run_dir import read_metrics
from swav.engine.train import ConfigMismatchError, pretrain
from tests.conftest import tiny_overrides


def test_trains_and_writes_run_directory(tmp_path):
    cfg = build_config(None, tiny_overrides(tmp_path / "run"))
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == 2 and r.iterations == 6 and math.isfinite(r.last_loss)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "loss.png"):
        assert (run / name).exists(), name
    rows = read_metrics(run)
    its = [m["iteration"] for m in rows if "kind" not in m]
    assert its == list(range(6))  # one line per iteration
    health = [m for m in rows if m.get("kind") == "health"]
    assert health and all(0 <= h["code_entropy"] <= math.log(20) + 1e-4 for h in health)
    assert all(1 <= h["prototypes_in_batch"] <= 20 for h in health)
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 2 and state["next_batch"] == 0


def _weights(run_dir):
    return safe_load(run_dir / "checkpoint.pt")["model"]


def test_resume_is_bitwise_exact(tmp_path):
    extra = {"train.deterministic": True, "swav.queue_length": 32, "swav.epoch_queue_starts": 0}
    straight = build_config(None, tiny_overrides(tmp_path / "a", **extra))
    pretrain(straight, progress=False)
    split = build_config(None, tiny_overrides(tmp_path / "b", **extra))
    first = pretrain(split, progress=False, stop_after_epoch=1)
    assert first.interrupted and first.epochs_done == 1
    second = pretrain(split, progress=False)
    assert second.epochs_done == 2
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    qa = safe_load(tmp_path / "a" / "checkpoint.pt")["queue"]
    qb = safe_load(tmp_path / "b" / "checkpoint.pt")["queue"]
    assert torch.equal(qa["embeddings"], qb["embeddings"])


def test_refuses_checkpoint_of_other_configuration(tmp_path):
    pretrain(
        build_config(None, tiny_overrides(tmp_path / "r", **{"train.epochs": 1})), progress=False
    )
    other = build_config(None, tiny_overrides(tmp_path / "r", **{"optim.base_lr": 0.1}))
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        pretrain(other, progress=False)
    # more epochs is not a different configuration: it continues
    longer = build_config(None, tiny_overrides(tmp_path / "r", **{"train.epochs": 2}))
    assert pretrain(longer, progress=False).epochs_done == 2
    r = pretrain(other, allow_config_change=True, progress=False)
    assert r.epochs_done == 2


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "nan"
    cfg = build_config(None, tiny_overrides(run, **{"train.epochs": 1}))
    pretrain(cfg, progress=False)
    before = (run / "checkpoint.pt").read_bytes()
    import swav.objective.swav_loss as objective

    real = objective.swapped_prediction_loss

    def poisoned(*a, **k):
        return real(*a, **k) * float("nan")

    monkeypatch.setattr(objective, "swapped_prediction_loss", poisoned)
    cfg2 = build_config(None, tiny_overrides(run, **{"train.epochs": 3}))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        pretrain(cfg2, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_invalid_configuration_refused_before_training(tmp_path):
    run = tmp_path / "never"
    cases = {
        "optim.base_lr=-0.1": "optim.base_lr",
        "swav.crops_for_assign=[0,7]": "swav.crops_for_assign",
        "swav.queue_length=50": "swav.queue_length",
        "model.colour=red": "unknown configuration key",
        "train.precision=fp8": "train.precision",
    }
    for override, msg in cases.items():
        with pytest.raises(ConfigError, match=msg):
            build_config(None, tiny_overrides(run) + [override])
    cfg = build_config(None, tiny_overrides(run, **{"train.batch_size": 512}))
    with pytest.raises(ConfigError, match="larger than the dataset"):
        pretrain(cfg, progress=False)
    assert not run.exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path, image_folder):
    (image_folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (image_folder / "dogs" / "0.png").read_bytes()
    (image_folder / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    cfg = build_config(
        None,
        tiny_overrides(
            tmp_path / "c",
            **{
                "data.source": str(image_folder),
                "data.limit": 0,
                "train.batch_size": 13,
                "train.iters_per_epoch": 0,
                "train.epochs": 1,
            },
        ),
    )
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == 1 and math.isfinite(r.last_loss)
    assert sorted(os.path.basename(n) for n in r.corrupt) == ["broken.jpg", "truncated.png"]
    epoch_rows = [m for m in read_metrics(tmp_path / "c") if m.get("kind") == "epoch"]
    assert epoch_rows[-1]["corrupt_images"] == 2


KILL_SCRIPT = """
import sys
from swav.config import build_config
from swav.engine.train import pretrain
sys.path.insert(0, {root!r})
from tests.conftest import tiny_overrides
cfg = build_config(None, tiny_overrides({run!r}, **{{"train.iters_per_epoch": 1,
    "train.epochs": 100000, "train.save_every": 1}}))
pretrain(cfg, progress=False)
"""


def test_sigkill_during_checkpointing_resumes_from_last_complete(tmp_path):
    run = tmp_path / "killed"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = KILL_SCRIPT.format(root=root, run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints").exists() or len(list((run / "checkpoints").iterdir())) < 3:
            assert proc.poll() is None, "training process died on its own"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.37)  # somewhere inside the save loop: one checkpoint per iteration
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = safe_load(run / "checkpoint.pt")  # complete and loadable
    done = state["epoch"]
    assert done >= 3
    cfg = build_config(
        None,
        tiny_overrides(
            run, **{"train.iters_per_epoch": 1, "train.epochs": done + 2, "train.save_every": 1}
        ),
    )
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == done + 2
    epochs = [m["epoch"] for m in read_metrics(run) if m.get("kind") == "epoch"]
    assert epochs[-2:] == [done + 1, done + 2]
    assert epochs == sorted(set(epochs))  # no record twice
    assert not list(run.rglob("*.tmp"))


def test_resume_tidies_what_a_kill_left(tmp_path):
    from swav.engine.curves import training_rows
    from swav.engine.run_dir import RunDir

    run = RunDir(tmp_path / "r")
    pretrain(build_config(None, tiny_overrides(run.path, **{"train.epochs": 1})), progress=False)
    before = run.metrics.read_text()
    (run.path / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    with open(run.metrics, "a") as f:  # records of iterations the checkpoint never reached
        f.write(json.dumps({"iteration": 3, "epoch": 2, "loss": 9.0, "lr": 0.1}) + "\n")
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "iteration": 6, "loss": 9.0}) + "\n")
        f.write('{"iteration": 4, "ep')  # a line cut by the kill
    assert (
        run.trim_metrics(4) == 2  # the step of index 3 stays, the epoch record of 6 steps goes
        and run.metrics.read_text()
        == before + json.dumps({"iteration": 3, "epoch": 2, "loss": 9.0, "lr": 0.1}) + "\n"
    )
    pretrain(build_config(None, tiny_overrides(run.path, **{"train.epochs": 2})), progress=False)
    assert not list(run.path.glob("*.tmp"))
    records = run.read_metrics()
    epochs = [m["epoch"] for m in records if m.get("kind") == "epoch"]
    assert epochs == [1, 2] and 9.0 not in [m.get("loss") for m in records]
    its = [r["iteration"] for r in records if "kind" not in r]
    assert its == sorted(set(its))
    assert [r["iteration"] for r in training_rows(run)] == its


def test_interrupt_signal_saves_mid_epoch(tmp_path, monkeypatch):
    # SIGTERM asks for a checkpoint at the end of the current iteration
    run = tmp_path / "term"
    cfg = build_config(None, tiny_overrides(run, **{"train.iters_per_epoch": 4, "train.epochs": 1}))
    from swav.objective.swav_loss import SwAVLoss

    real = SwAVLoss.freeze_prototypes
    calls = {"n": 0}

    def signalling(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(SwAVLoss, "freeze_prototypes", signalling)
    r = pretrain(cfg, progress=False)
    monkeypatch.undo()
    assert r.interrupted
    from swav.engine.run_dir import RunDir

    assert not (run / "loss.png").exists() and "loss.png" not in RunDir(run).outputs()
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 0 and state["next_batch"] == 2
    assert r.stop_signal == signal.SIGTERM
    r2 = pretrain(cfg, progress=False)
    assert r2.epochs_done == 1 and not r2.interrupted and r2.stop_signal is None


def test_save_every_iters_checkpoints_within_the_epoch(tmp_path, monkeypatch):
    from swav.engine.state import RunState

    saved = []
    real = RunState.save

    def recording(self, path):
        if path.name == "checkpoint.pt":
            saved.append((self.epoch, self.next_batch))
        return real(self, path)

    monkeypatch.setattr(RunState, "save", recording)
    over = {"train.iters_per_epoch": 5, "train.epochs": 2, "train.save_every_iters": 2}
    pretrain(build_config(None, tiny_overrides(tmp_path / "r", **over)), progress=False)
    assert saved == [(0, 2), (0, 4), (1, 0), (1, 1), (1, 3), (2, 0)]
    # a logistics setting: changing it does not change the run's identity
    over["train.save_every_iters"] = 0
    over["train.epochs"] = 3
    pretrain(build_config(None, tiny_overrides(tmp_path / "r", **over)), progress=False)


def test_multicrop_on_device_trains_and_resumes_exactly(tmp_path):
    extra = {"multicrop.on_device": True, "train.deterministic": True}
    straight = build_config(None, tiny_overrides(tmp_path / "a", **extra))
    r = pretrain(straight, progress=False)
    assert r.epochs_done == 2 and r.iterations == 6 and math.isfinite(r.last_loss)
    split = build_config(None, tiny_overrides(tmp_path / "b", **extra))
    pretrain(split, progress=False, stop_after_epoch=1)
    pretrain(split, progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the loader only decoded: the crops came from MultiCrop.batch, not the per-image path
    plain = _weights_after(tmp_path / "c", {"train.deterministic": True})
    assert any(not torch.equal(a[k], plain[k]) for k in a if a[k].is_floating_point())


def _weights_after(run, extra):
    pretrain(build_config(None, tiny_overrides(run, **extra)), progress=False)
    return _weights(run)


def test_rerunning_a_finished_run_changes_nothing(tmp_path, capsys, monkeypatch):
    import swav.engine.trainer as trainer
    from swav.cli import main

    run = tmp_path / "done"
    cfg = build_config(None, tiny_overrides(run, **{"train.epochs": 1}))
    first = pretrain(cfg, progress=False)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run read its data")

    with monkeypatch.context() as m:  # answered from the checkpoint, before any data is listed
        m.setattr(trainer, "build_data", no_data)
        again = pretrain(cfg, progress=False)
    assert again.already_finished and again.epochs_done == 1
    assert again.iterations == first.iterations
    assert again.last_loss == pytest.approx(first.last_loss) and again.healthy
    want = first.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in again.model.state_dict().items())
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    argv = ["pretrain", "--preset", "defaults", *tiny_overrides(run, **{"train.epochs": 1})]
    assert main([*argv, "--no-progress"]) == 0
    assert "already finished its 1 epochs; nothing changed" in capsys.readouterr().out


def test_a_run_stopped_by_a_signal_exits_non_zero(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = tmp_path / "sig"
    args = tiny_overrides(run, **{"train.iters_per_epoch": 200, "train.epochs": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "swav.cli", "pretrain", "--no-progress", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped (resume by running the same command)" in out
    assert safe_load(run / "checkpoint.pt")["next_batch"] > 0  # saved mid-epoch


def test_a_loss_that_is_nan_from_the_start_says_no_checkpoint_was_written(tmp_path, monkeypatch):
    import swav.objective.swav_loss as objective

    real = objective.swapped_prediction_loss
    monkeypatch.setattr(
        objective, "swapped_prediction_loss", lambda *a, **k: real(*a, **k) * float("nan")
    )
    cfg = build_config(None, tiny_overrides(tmp_path / "nan0", **{"train.on_collapse": "warn"}))
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        pretrain(cfg, progress=False)


def test_epoch_records_hold_the_mean_loss_of_the_epoch(tmp_path, capsys):
    """The epoch record, the epoch's log line and the result: the mean of the epoch's
    iteration records, also for an epoch resumed in the middle."""
    run = tmp_path / "mean"
    over = {"train.epochs": 3, "train.iters_per_epoch": 6, "train.log_every": 2}
    cfg = build_config(None, tiny_overrides(run, **over))
    pretrain(cfg, progress=False, stop_after_epoch=1)
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 1
    result = pretrain(cfg, progress=False)
    rows = read_metrics(run)
    steps = {m["iteration"]: m["loss"] for m in rows if "kind" not in m}
    epochs = [m for m in rows if m.get("kind") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e in epochs:
        first = (e["epoch"] - 1) * 6
        mean = sum(steps[i] for i in range(first, first + 6)) / 6
        assert e["loss"] == pytest.approx(mean, rel=1e-6), e
        assert e["last_loss"] == pytest.approx(steps[first + 5], rel=1e-6)
    assert result.last_loss == pytest.approx(epochs[-1]["loss"], rel=1e-6)


def test_an_epoch_resumed_mid_way_counts_its_first_iterations_in_the_mean(tmp_path, monkeypatch):
    run = tmp_path / "midway"
    over = {"train.epochs": 2, "train.iters_per_epoch": 6, "train.log_every": 1}
    cfg = build_config(None, tiny_overrides(run, **over))
    import swav.engine.train as train

    real = train.training_step
    calls = {"n": 0}

    def stop_after_eight(t, *a, **k):  # a signal arrives during the ninth step
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGINT)
        return real(t, *a, **k)

    monkeypatch.setattr(train, "training_step", stop_after_eight)
    first = pretrain(cfg, progress=False)
    assert first.interrupted
    assert safe_load(run / "checkpoint.pt")["next_batch"] == 3  # epoch 2, 3 steps in
    monkeypatch.setattr(train, "training_step", real)
    pretrain(cfg, progress=False)
    rows = read_metrics(run)
    steps = {m["iteration"]: m["loss"] for m in rows if "kind" not in m}
    assert sorted(steps) == list(range(12))
    second = [m for m in rows if m.get("kind") == "epoch"][-1]
    assert second["loss"] == pytest.approx(sum(steps[i] for i in range(6, 12)) / 6, rel=1e-6)


@pytest.mark.parametrize("method", ["deepclusterv2", "selav2"])
@pytest.mark.parametrize("at", [2, 8])
def test_clustering_methods_recover_from_a_forced_collapse_and_finish(
    tmp_path, monkeypatch, method, at
):
    """A collapse declared in the first epoch (the rewind goes to the state saved before
    training) or in the second: the rewind restores the memory bank, and the run finishes."""
    from swav.engine.health import Collapse, CollapseMonitor

    real = CollapseMonitor.observe
    fired = {"done": False}

    def observe(self, losses, entropy, spread, queue_active):
        seen = real(self, losses, entropy, spread, queue_active)
        if not fired["done"] and losses[-1][0] >= at:
            fired["done"] = True
            return Collapse(losses[-1][0], at, True, False, False, 0.99, spread, False)
        return seen

    monkeypatch.setattr(CollapseMonitor, "observe", observe)
    run = tmp_path / method
    over = {
        "method": method,
        "train.epochs": 3,
        "train.iters_per_epoch": 6,
        "train.on_collapse": "recover",
        "model.n_prototypes": "[8]",
    }
    r = pretrain(build_config(None, tiny_overrides(run, **over)), progress=False)
    assert fired["done"] and len(r.recoveries) == 1 and r.epochs_done == 3
    assert math.isfinite(r.last_loss)
    rows = read_metrics(run)
    assert [m["kind"] for m in rows if m.get("kind") in ("recovery", "end")] == ["recovery", "end"]
    bank = safe_load(run / "checkpoint.pt")["objective"]["bank"]
    assert (bank["indices"] >= 0).all()  # every row of the bank holds an image
