"""Sinkhorn across processes (Gloo, 2 ranks on the CPU) equals Sinkhorn over the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swav import sinkhorn
from swav.engine.checkpoint import safe_load

SIZES = (10, 22)  # ranks may hold different batch sizes


def _scores():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(sum(SIZES), 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    return z @ c.t()


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    s = _scores()
    start = sum(SIZES[:rank])
    mine = s[start : start + SIZES[rank]]
    torch.save(
        {
            "global": sinkhorn(mine, 0.05, 3),
            "global_log": sinkhorn(mine, 0.05, 3, method="log"),
            "local": sinkhorn(mine, 0.05, 3, distributed=False),
        },
        os.path.join(out_dir, f"{rank}.pt"),
    )
    dist.destroy_process_group()


def test_global_sinkhorn_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s = _scores()
    full = sinkhorn(s, 0.05, 3)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    glob = torch.cat([p["global"] for p in parts])
    assert torch.allclose(glob, full, atol=1e-6)
    assert torch.allclose(torch.cat([p["global_log"] for p in parts]), full, atol=1e-5)
    local = torch.cat([p["local"] for p in parts])
    assert not torch.allclose(local, full, atol=1e-4)  # per-rank normalisation differs
    assert torch.allclose(local[: SIZES[0]], sinkhorn(s[: SIZES[0]], 0.05, 3), atol=1e-6)


def test_torchrun_two_processes_pretrain(tmp_path):
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from tests.conftest import tiny_overrides

    run = tmp_path / "ddp"
    args = tiny_overrides(
        run, **{"swav.queue_length": 64, "swav.epoch_queue_starts": 0, "train.epochs": 2}
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "swav.cli",
        "pretrain",
        "--no-progress",
        "--preset",
        "defaults",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = safe_load(run / "checkpoint.pt")
    assert state["epoch"] == 2
    # each rank keeps queue_length / world_size embeddings
    assert state["queue"]["embeddings"].shape[1] == 32
    assert state["queue"]["per_rank"].shape[:2] == (2, 2)  # both ranks, both assigned crops
    assert "process 0 of 2" in proc.stderr or "process 1 of 2" in proc.stderr
    # resume in two processes: each rank takes back its own queue
    cmd[cmd.index("train.epochs=2")] = "train.epochs=3"
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr and safe_load(run / "checkpoint.pt")["epoch"] == 3
