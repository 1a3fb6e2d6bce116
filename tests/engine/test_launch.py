"""Launch variables: torchrun's, srun's in every form SLURM writes them, or none."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swav.engine.checkpoint import safe_load
from swav.engine.launch import (
    LaunchError,
    expand_nodelist,
    expand_tasks_per_node,
    resolve_launch,
)
from swav.engine.runtime import thread_budget, usable_cores
from tests.conftest import tiny_overrides


@pytest.mark.parametrize(
    "text,hosts",
    [
        ("node01", ["node01"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a1,b[3-4]", ["a1", "b3", "b4"]),
        ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x[009-011],y", ["x009", "x010", "x011", "y"]),
        ("login-1.cluster,c[1,3]", ["login-1.cluster", "c1", "c3"]),
    ],
)
def test_node_lists(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize(
    "text,counts",
    [("4", [4]), ("2(x3),1", [2, 2, 2, 1]), ("8(x2)", [8, 8]), ("1,2(x2),3", [1, 2, 2, 3])],
)
def test_tasks_per_node(text, counts):
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("bad", ["node[01-04", "node]", "n[4-1]", "n[a-b]", ""])
def test_unreadable_node_lists_are_refused(bad):
    with pytest.raises(LaunchError):
        expand_nodelist(bad)


def srun_env(**over):
    env = {
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "7",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_STEP_NODELIST": "node[01-03,07]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x3),1",
    }
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def test_srun_variables_give_rank_world_and_rendezvous():
    launch = resolve_launch(srun_env())
    assert (launch.rank, launch.world_size, launch.local_rank) == (5, 7, 1)
    assert launch.master_addr == "node01" and launch.launcher == "slurm"
    assert launch.master_port == 15000 + 4242  # one port per job
    assert resolve_launch(srun_env(MASTER_PORT="12345")).master_port == 12345
    env = launch.env()
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "7" and env["MASTER_ADDR"] == "node01"


@pytest.mark.parametrize(
    "over,words",
    [
        ({"SLURM_PROCID": "7"}, "outside SLURM_NTASKS=7"),
        ({"SLURM_NTASKS": "8"}, "add up to 7, not SLURM_NTASKS=8"),
        ({"SLURM_STEP_NODELIST": "node[01-02]"}, "give 4 nodes, the node list"),
        ({"SLURM_LOCALID": "1", "SLURM_NODEID": "3"}, "does not fit"),
        ({"SLURM_NTASKS": "seven"}, "is not a number"),
    ],
)
def test_disagreeing_slurm_variables_are_refused(over, words):
    with pytest.raises(LaunchError, match=words):
        resolve_launch(srun_env(**over))


def test_processes_on_this_node_are_known_to_share_its_cores():
    assert resolve_launch(srun_env()).local_world_size == 2  # node 2 of "2(x3),1"
    assert resolve_launch(srun_env(SLURM_NODEID="3", SLURM_LOCALID="0")).local_world_size == 1
    no_list = srun_env(SLURM_STEP_TASKS_PER_NODE=None, SLURM_STEP_NODELIST=None)
    assert resolve_launch({**no_list, "SLURM_NTASKS_PER_NODE": "4"}).local_world_size == 4
    torchrun = {"RANK": "1", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert resolve_launch(torchrun).local_world_size == 4
    assert resolve_launch(srun_env()).env()["LOCAL_WORLD_SIZE"] == "2"


@pytest.mark.parametrize(
    "threads,workers,device,procs,cores,expect",
    [
        (0, -1, "cpu", 1, 2, (2, 1)),  # two cores: both compute, one worker crops ahead
        (0, -1, "cpu", 1, 16, (16, 4)),
        (0, -1, "cpu", 1, 1, (1, 0)),  # one core: load in the main process
        (0, -1, "cpu", 2, 16, (8, 2)),  # two processes share the node's cores
        (0, -1, "cuda", 8, 96, (1, 11)),  # a GPU: workers take all cores but one
        (3, -1, "cpu", 1, 8, (3, 5)),  # threads given: the workers get the rest
        (0, 6, "cpu", 1, 8, (8, 6)),  # workers given: the threads still take the cores
        (0, 0, "cpu", 1, 4, (4, 0)),
        (4, 4, "cpu", 1, 4, (4, 4)),  # both given: kept
        (8, 2, "cpu", 1, 4, (8, 2)),  # more threads than cores: kept, and said
    ],
)
def test_threads_and_workers_are_sized_together_to_the_cores(
    threads, workers, device, procs, cores, expect, monkeypatch
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    budget = thread_budget(threads, workers, torch.device(device), procs, cores)
    assert (budget.threads, budget.workers) == expect
    assert budget.cores == max(1, cores // procs)
    compete = threads > 0 and workers >= 0 and max(expect) > budget.cores
    assert ("compete" in budget.describe()) == compete


def test_omp_num_threads_stands_for_the_threads_unless_they_are_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it
    budget = thread_budget(0, -1, torch.device("cpu"), 1, 8)
    assert (budget.threads, budget.workers) == (1, 7) and "OMP_NUM_THREADS=1" in budget.describe()
    assert thread_budget(3, -1, torch.device("cpu"), 1, 8).threads == 3


def test_the_budget_reads_the_affinity_mask():
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))
    assert thread_budget(0, -1, torch.device("cpu")).cores == usable_cores()


def test_torchrun_wins_and_a_batch_script_is_one_process():
    torchrun = srun_env(RANK="3", WORLD_SIZE="8", LOCAL_RANK="3", MASTER_ADDR="h", MASTER_PORT="1")
    launch = resolve_launch(torchrun)  # torchrun inside an srun step: torchrun's ranks
    assert (launch.launcher, launch.rank, launch.world_size) == ("torchrun", 3, 8)
    batch = srun_env(SLURM_STEP_ID=None)  # the sbatch script itself: no step
    assert resolve_launch(batch).launcher == "single"
    assert resolve_launch(srun_env(SLURM_STEP_ID="4294967294")).launcher == "single"
    assert resolve_launch({}).world_size == 1
    assert resolve_launch(srun_env(SWAV_LAUNCH="single")).world_size == 1
    with pytest.raises(LaunchError, match="RANK=4 is outside WORLD_SIZE=4"):
        resolve_launch({"RANK": "4", "WORLD_SIZE": "4"})


def test_two_srun_style_processes_train_together(tmp_path):
    """Two processes started with SLURM's variables only (as srun would), no torchrun."""
    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "slurm"
    args = tiny_overrides(run, **{"train.epochs": 1})
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(
            OMP_NUM_THREADS="1",
            SLURM_STEP_ID="0",
            SLURM_JOB_ID="777",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NODEID="0",
            SLURM_NTASKS="2",
            SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_TASKS_PER_NODE="2",
            MASTER_PORT=str(29600 + os.getpid() % 300),
        )
        cmd = [sys.executable, "-m", "swav.cli", "pretrain", "--no-progress", *args]
        procs.append(subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs[0][-2000:] + errs[1][-2000:]
    assert "process 0 of 2 (gloo, launched by slurm" in errs[0]
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 1
