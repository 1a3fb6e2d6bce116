"""One run per run directory: a second ``swav pretrain`` on a directory in use is refused in one
line naming the first; the lock of a process that is gone is taken over."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swav.cli import main
from swav.engine.run_dir import RunDir, RunLock, RunLockedError
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding the run directory's lock (as a training run does)."""
    code = (
        "import sys, time\n"
        "from swav.engine.run_dir import RunDir, RunLock\n"
        f"RunLock(RunDir.of({str(run)!r})).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_directory_in_use_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        argv = ["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(run)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("swav pretrain: error:")
        assert f"in use by process {holder.pid} on" in err[0] and "(started 20" in err[0]
        assert not (run / "checkpoint.pt").exists() and not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_started_together_train_once(tmp_path):
    """The same command started twice: one trains, the other is refused; the metrics hold each
    iteration once."""
    run = tmp_path / "run"
    over = tiny_overrides(run, **{"train.epochs": 3, "train.iters_per_epoch": 4})
    cmd = [sys.executable, "-m", "swav.cli", "pretrain", "--preset", "defaults", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([*cmd, *over], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-800:] for _, err in results]
    refused = next(err for code, err in results if code == 2)
    assert "is in use by process" in refused.strip().splitlines()[-1]
    steps = [r["iteration"] for r in RunDir(run).read_metrics() if "kind" not in r]
    assert sorted(steps) == sorted(set(steps)) == list(range(12))


def test_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    holder.kill()  # killed: the kernel releases its lock, its record stays
    holder.wait()
    record = json.loads((run / "run.lock").read_text())
    assert record["pid"] == holder.pid
    argv = ["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(run)]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert f"took over the lock of process {holder.pid}" in caplog.text
    assert (run / "run.lock").read_text() == ""  # released at the end
    with RunLock(RunDir(run)):  # free again
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            RunLock(RunDir(run)).acquire()


def test_a_refused_new_directory_is_not_left_behind(tmp_path, capsys):
    run = tmp_path / "new"
    argv = ["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(run)]
    argv.append("data.source=" + str(tmp_path / "missing"))
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not run.exists()  # the lock made the folder; nothing else was written: removed
