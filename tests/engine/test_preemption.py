"""Preemption as clusters do it: torchrun signals each rank's whole process group, SLURM every
process of a step, loader workers included. With 2 ranks x 2 loader workers, SIGTERM to every
process must still end in a checkpoint at an iteration boundary, and the resumed run must end
with exactly the weights of a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import RunDir
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
OVER = {
    "train.epochs": 2,
    "train.iters_per_epoch": 0,
    "data.limit": 512,  # 16 steps of 2 x 16 images per epoch
    "data.workers": 2,
    "train.threads": 1,
    "train.log_every": 1,
}


def _torchrun(args: list[str], port: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(port), "-m", "swav.cli", "pretrain", "--no-progress"]
    return [*cmd, "--preset", "defaults", *args]


def _srun_env(rank: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(
        OMP_NUM_THREADS="1",
        SLURM_STEP_ID="0",
        SLURM_JOB_ID="778",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_NTASKS="2",
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_TASKS_PER_NODE="2",
        MASTER_PORT=str(port),
    )
    return env


def _launch(how: str, args: list[str], port: int) -> list[subprocess.Popen]:
    """The run's launch, each launched process in a session (process group) of its own, as a
    scheduler's step is."""
    kw = dict(cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if how == "torchrun":
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return [subprocess.Popen(_torchrun(args, port), env=env, **kw)]
    cmd = [sys.executable, "-m", "swav.cli", "pretrain", "--no-progress", "--preset", "defaults"]
    return [subprocess.Popen([*cmd, *args], env=_srun_env(r, port), **kw) for r in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    return errs


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return safe_load(run / "checkpoint.pt")["model"]


def _preempt_and_resume(how: str, tmp_path: Path, port: int) -> None:
    run = tmp_path / "stopped"
    args = tiny_overrides(run, **OVER)
    procs = _launch(how, args, port)
    deadline, metrics = time.time() + 240, RunDir(run)
    while True:  # preempted in the second epoch, a few steps in
        assert all(p.poll() is None for p in procs) and time.time() < deadline, _finish(procs)
        steps = [m["iteration"] for m in metrics.read_metrics() if "kind" not in m]
        if steps and max(steps) >= 16 + 3:
            break
        time.sleep(0.05)
    workers = _loader_workers(procs)
    assert len(workers) >= 4, "the ranks should read with 2 loader workers each"
    # every process of the job, as a scheduler does: each process group of the launch
    # (torchrun's, and each rank's with its loader workers)
    for group in {g for _, g in _descendants(procs).values()}:
        os.killpg(group, signal.SIGTERM)
    errs = _finish(procs)
    assert all(p.returncode != 0 for p in procs)  # stopped, not finished
    assert not any("killed by signal" in e for e in errs), errs[0][-1500:]
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["next_batch"] < 16, (state["epoch"], errs[0][-800:])
    assert state["iteration"] == 16 + state["next_batch"]  # an iteration boundary
    logged = [m["iteration"] for m in metrics.read_metrics() if "kind" not in m]
    assert max(logged) <= state["iteration"]  # nothing trained after the checkpoint is kept
    # resumed with the same command
    errs = _finish(_launch(how, args, port + 1))
    assert "resuming" in "".join(errs), errs[0][-1500:]
    resumed = _final_weights(run)
    # a run never stopped
    plain = tmp_path / "plain"
    procs = _launch(how, tiny_overrides(plain, **OVER), port + 2)
    errs = _finish(procs)
    assert all(p.returncode == 0 for p in procs), errs[0][-1500:]
    never_stopped = _final_weights(plain)
    for k, v in never_stopped.items():
        assert torch.equal(resumed[k], v), k
    steps = [m["iteration"] for m in metrics.read_metrics() if "kind" not in m]
    assert sorted(steps) == list(range(32))  # every iteration recorded once


def _descendants(procs: list[subprocess.Popen]) -> dict[int, tuple[int, int]]:
    """Every process started by the launch: pid -> (parent, process group)."""
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(pid)] = (int(fields[1]), int(fields[2]))
    found = {p.pid: table[p.pid] for p in procs if p.pid in table}
    grew = True
    while grew:
        new = {pid: v for pid, v in table.items() if v[0] in found and pid not in found}
        found.update(new)
        grew = bool(new)
    return found


def _loader_workers(procs: list[subprocess.Popen]) -> list[int]:
    """The loader workers: processes started by a rank (torchrun's children, or the processes
    srun started)."""
    tree = _descendants(procs)
    launched = {p.pid for p in procs}
    if len(procs) == 1:  # torchrun: its children are the ranks
        ranks = {pid for pid, (parent, _) in tree.items() if parent in launched}
    else:
        ranks = launched
    return [pid for pid, (parent, _) in tree.items() if parent in ranks]


def test_torchrun_preempted_with_loader_workers_saves_and_resumes_exactly(tmp_path):
    _preempt_and_resume("torchrun", tmp_path, 29100 + os.getpid() % 300)


def test_srun_style_preempted_with_loader_workers_saves_and_resumes_exactly(tmp_path):
    _preempt_and_resume("srun", tmp_path, 29450 + os.getpid() % 300)


def test_a_rank_killed_without_warning_ends_the_other_in_one_line(tmp_path):
    """srun-style: rank 1 is SIGKILLed (out of memory, a lost node); rank 0, in a collective
    with it, ends with one line naming what happened and where to resume, exit code 2."""
    run = tmp_path / "peer"
    over = {**OVER, "data.workers": 0, "train.epochs": 3}
    procs = _launch("srun", tiny_overrides(run, **over), 29800 + os.getpid() % 150)
    deadline, metrics = time.time() + 240, RunDir(run)
    while True:
        assert all(p.poll() is None for p in procs) and time.time() < deadline, _finish(procs)
        steps = [m["iteration"] for m in metrics.read_metrics() if "kind" not in m]
        if steps and max(steps) >= 4:
            break
        time.sleep(0.05)
    procs[1].kill()
    err = procs[0].communicate(timeout=180)[1]
    procs[1].communicate(timeout=30)
    assert procs[0].returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("swav ")]
    assert len(lines) == 1 and "another process of the run stopped" in lines[0], err[-2000:]
    assert "checkpoint.pt holds the last complete checkpoint" in lines[0]
    assert "Traceback" not in err
