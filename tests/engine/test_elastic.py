"""Resuming on another number of processes: the epoch continues where it stopped, every image
of it read once; the queue is dealt out again; the checkpoint says how many processes wrote it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from swav.data.loader import EpochSampler
from swav.engine.checkpoint import safe_load
from swav.engine.methods.swav import load_queue
from swav.objective.queue import FeatureQueue
from tests.conftest import tiny_overrides


def read(samplers):
    """What every process reads, in global batch order (batch t: each rank's t-th slice)."""
    streams = [list(s) for s in samplers]
    b = samplers[0].batch_size
    out = []
    for t in range(samplers[0].remaining_batches()):
        for st in streams:
            out += [i for i, _ in st[t * b : (t + 1) * b]]
    return out


@pytest.mark.parametrize(
    "old,new,batch,done_batches",
    [(2, 1, 8, 3), (1, 2, 8, 5), (2, 3, 6, 2), (3, 2, 4, 7), (1, 1, 8, 2)],
)
def test_a_resumed_epoch_reads_every_image_once(old, new, batch, done_batches):
    size = 203
    before = [EpochSampler(size, batch, 7, r, old) for r in range(old)]
    for s in before:
        s.set_epoch(4)
    order = read(before)  # the whole epoch on the old processes
    consumed = done_batches * batch * old
    after = [EpochSampler(size, batch, 7, r, new) for r in range(new)]
    for s in after:
        s.set_epoch(4, start_sample=consumed)
    rest = read(after)
    seen = order[:consumed] + rest
    assert len(seen) == len(set(seen)), "an image read twice"
    g = torch.Generator().manual_seed(7 * 100_003 + 4)
    perm = torch.randperm(size, generator=g).tolist()
    # in the epoch's order (global batch by global batch), none skipped
    g_new = batch * new
    for t in range(0, len(rest), g_new):
        block = perm[consumed + t : consumed + min(t + g_new, len(rest))]
        assert sorted(rest[t : t + g_new]) == sorted(block)
    end = after[0].batches * batch * new
    assert consumed + len(rest) >= min(end, len(order)) - 2 * new  # at most a tiny tail left
    for s in after:
        assert len(s) == len(list(s))


def test_the_queue_is_dealt_out_again():
    length, dim = 12, 3
    saved = torch.arange(2 * 2 * (length // 2) * dim, dtype=torch.float32).reshape(2, 2, 6, dim)
    state = {"embeddings": saved[0], "filled": torch.tensor(6), "per_rank": saved}
    whole = torch.cat([saved[0], saved[1]], dim=1)  # crops x 12 x dim
    for world in (1, 3):
        got = []
        for rank in range(world):
            me = SimpleNamespace(
                queue=FeatureQueue(2, length // world, dim),
                dist=SimpleNamespace(world_size=world, rank=rank),
            )
            load_queue(me.queue, me.dist, dict(state))
            got.append(me.queue.embeddings)
            assert me.queue.active  # it was full, it stays full
        assert torch.equal(torch.cat(got, dim=1), whole)  # every saved embedding, once
    odd = SimpleNamespace(queue=FeatureQueue(2, 5, dim), dist=SimpleNamespace(world_size=1, rank=0))
    # a shorter queue: the newest 5 kept, never a crash
    load_queue(odd.queue, odd.dist, dict(state))
    assert odd.queue.active and torch.equal(odd.queue.embeddings, saved[0][:, :5])


def test_a_partly_filled_queue_keeps_only_its_embeddings_on_another_world_size():
    length, dim, filled = 4, 3, 3
    saved = torch.rand(2, 2, length, dim) + 1  # no real embedding is all zeros
    saved[:, :, filled:] = 0  # each rank's queue fills from the front
    state = {"embeddings": saved[0], "filled": torch.tensor(filled), "per_rank": saved}
    one = SimpleNamespace(
        queue=FeatureQueue(2, 2 * length, dim), dist=SimpleNamespace(world_size=1, rank=0)
    )
    load_queue(one.queue, one.dist, dict(state))
    q = one.queue
    assert int(q.filled) == 2 * filled and not q.active  # 6 of 8: not full
    rows = q.embeddings[:, : 2 * filled]
    assert (rows.abs().sum(-1) > 0).all(), "an empty slot counted as an embedding"
    expect = torch.cat([saved[0][:, :filled], saved[1][:, :filled]], dim=1)
    assert torch.equal(rows, expect)


def test_two_processes_stopped_mid_epoch_resume_on_one(tmp_path):
    from swav.config import build_config
    from swav.engine.train import pretrain

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "elastic"
    over = {
        "swav.queue_length": 64,
        "swav.epoch_queue_starts": 0,
        "train.epochs": 2,
        "train.iters_per_epoch": 0,
        "data.limit": 256,
        "train.log_every": 1,
    }
    args = tiny_overrides(run, **over)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29700 + os.getpid() % 200), "-m", "swav.cli", "pretrain"]
    proc = subprocess.Popen(
        [*cmd, "--no-progress", "--preset", "defaults", *args],
        cwd=root,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while True:  # stop it in the second epoch, once a few steps were logged there
        assert proc.poll() is None and time.time() < deadline, "the run ended on its own"
        metrics = run / "metrics.jsonl"
        if metrics.exists() and '"epoch": 2, "loss"' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # stopped by a signal
    state = safe_load(run / "checkpoint.pt")
    assert state["world_size"] == 2 and state["epoch"] == 1 and state["next_batch"] > 0
    assert state["samples_in_epoch"] == state["next_batch"] * 16 * 2
    r = pretrain(build_config(None, args), progress=False)  # one process
    assert r.epochs_done == 2 and not r.interrupted
    final = safe_load(run / "checkpoint.pt")
    assert final["world_size"] == 1 and final["queue"]["embeddings"].shape[1] == 64


def _rank_pids(parent: int) -> dict[int, int]:
    """The training processes torchrun started, by rank (read from /proc)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) != parent:
            continue
        for var in environ:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(pid)
    return found


def test_sigkill_of_one_rank_loses_at_most_save_every_iters_steps(tmp_path):
    from swav.config import build_config
    from swav.engine.run_dir import RunDir
    from swav.engine.train import pretrain

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "killed"
    every = 3
    over = {
        "train.epochs": 1,
        "train.iters_per_epoch": 0,
        "data.limit": 1024,  # 32 global steps of 2 x 16 images
        "train.log_every": 1,
        "train.save_every_iters": every,
    }
    args = tiny_overrides(run, **over)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29500 + os.getpid() % 200), "-m", "swav.cli", "pretrain"]
    proc = subprocess.Popen(
        [*cmd, "--no-progress", "--preset", "defaults", *args],
        cwd=root,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    metrics = RunDir(run)
    while True:  # kill rank 1 without warning a few checkpoints into the epoch
        assert proc.poll() is None and time.time() < deadline, "the run ended on its own"
        steps = [m["iteration"] for m in metrics.read_metrics() if "kind" not in m]
        if steps and max(steps) >= 2 * every + 2:
            break
        time.sleep(0.02)
    os.kill(_rank_pids(proc.pid)[1], signal.SIGKILL)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0
    # the surviving rank ends in one line, not a traceback of the failed collective
    ours = [line for line in err.splitlines() if "swav pretrain" in line or "swav/" in line]
    assert any("another process of the run stopped" in line for line in ours) or not ours, ours
    assert not any('File "' in line and "/swav/" in line for line in err.splitlines()), err[-2000:]
    done = max(m["iteration"] for m in metrics.read_metrics() if "kind" not in m)
    state = safe_load(run / "checkpoint.pt")
    saved = state["next_batch"]
    assert state["epoch"] == 0 and saved % every == 0 and saved >= every
    assert done - saved <= every, (done, saved)  # steps lost to the kill
    r = pretrain(build_config(None, args), progress=False)  # resumed, on one process
    assert r.epochs_done == 1 and not r.interrupted


def test_skipped_images_are_recorded_from_every_process(tmp_path):
    """Each process reads its own share of the data: the checkpoint names the unreadable images
    that any process met, not the main process's alone."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(56):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = [f"bad{i}.jpg" for i in range(8)]
    for name in bad:
        (folder / name).write_bytes(b"\xff\xd8 broken")
    run = tmp_path / "run"
    over = {"data.source": str(tmp_path / "photos"), "data.limit": 0, "train.epochs": 1}
    over["train.iters_per_epoch"] = 0
    args = tiny_overrides(run, **over)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29350 + os.getpid() % 100), "-m", "swav.cli", "pretrain"]
    out = subprocess.run(
        [*cmd, "--no-progress", "--preset", "defaults", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    corrupt = safe_load(run / "checkpoint.pt")["corrupt"]
    assert sorted(Path(c).name for c in corrupt) == sorted(bad)  # 64 images, 2 x 2 x 16 a step
