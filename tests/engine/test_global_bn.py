"""BatchNorm statistics over processes (Gloo, on the CPU): equal to one process over the
whole batch, layer by layer and after several training steps."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from swav.engine.checkpoint import safe_load
from swav.engine.global_bn import convert_global_bn
from tests.conftest import tiny_overrides

B, C = 6, 5


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * B, C, 4, 4, generator=g) * 3 + 1
    r = torch.randn(2 * B, C, 4, 4, generator=g)
    return x, r


def _reference():
    x, r = _data()
    bn = nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * r).sum().backward()
    return bn, x, y


def _rank(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    ref, _, _ = _reference()  # the same initial parameters
    bn = nn.BatchNorm2d(C)
    bn.load_state_dict(ref.state_dict())
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
        bn.weight.copy_(ref.weight)
        bn.bias.copy_(ref.bias)
    net = convert_global_bn(nn.Sequential(bn))
    x, r = _data()
    mine = slice(rank * B, (rank + 1) * B)
    xr = x[mine].clone().requires_grad_(True)
    y = net(xr)
    (y * r[mine]).sum().backward()
    g = net[0]
    torch.save(
        {
            "y": y.detach(),
            "dx": xr.grad,
            "dw": g.weight.grad,
            "db": g.bias.grad,
            "running_mean": g.running_mean,
            "running_var": g.running_var,
        },
        os.path.join(out_dir, f"{rank}.pt"),
    )
    dist.destroy_process_group()


def test_global_batchnorm_equals_one_process_over_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    ref, x, y = _reference()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(parts[0]["dw"] + parts[1]["dw"], ref.weight.grad, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts[0]["db"] + parts[1]["db"], ref.bias.grad, atol=1e-4, rtol=0)
    for p in parts:
        torch.testing.assert_close(p["running_mean"], ref.running_mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(p["running_var"], ref.running_var, atol=1e-5, rtol=0)


def _train(tmp_path, name, processes, batch, sync_bn):
    root = Path(__file__).resolve().parents[2]
    run = tmp_path / name
    over = {
        "train.batch_size": batch,
        "train.epochs": 1,
        "train.iters_per_epoch": 8,
        "train.sync_bn": sync_bn,
        "data.limit": 256,
        # the noise threshold below was measured with float crops; uint8 crops are the same for
        # both runs too, but their trajectory amplifies the summation-order noise about 3x
        "data.transfer": "float",
    }
    args = [*tiny_overrides(run, **over), "--preset", "defaults", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if processes == 1:
        cmd = [sys.executable, "-m", "swav.cli", "pretrain", *args]
    else:
        port = str(29800 + os.getpid() % 150 + (7 if sync_bn else 0))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_port", port, "-m", "swav.cli", "pretrain", *args]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return safe_load(run / "checkpoint.pt")["model"]


def _distance(a, b):
    return max(
        float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()
    )


def test_two_processes_of_b_train_like_one_of_2b(tmp_path):
    one = _train(tmp_path, "one", 1, 32, True)
    synced = _train(tmp_path, "synced", 2, 16, True)
    local = _train(tmp_path, "local", 2, 16, False)
    d_synced, d_local = _distance(synced, one), _distance(local, one)
    # float noise (summation order over 2 processes) against per-process statistics
    print(f"largest weight difference to 1 x 2B: global {d_synced:.1e}, local {d_local:.1e}")
    assert d_synced < 1e-3, d_synced
    assert d_local > 20 * d_synced, (d_local, d_synced)
