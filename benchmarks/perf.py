"""Speed and memory benchmarks, each side by side with its peer in one run, timed alternately
(A, B, A, B, ...), reported as a ratio.

    python benchmarks/perf.py                 # everything; writes results/perf_<machine>.json
    python benchmarks/perf.py --only sinkhorn # one part

Parts: matmul peak (fp32, bf16), training step (ours vs lightly's SwaV pieces, ResNet-18
2x64 + 4x32 batch 64; ResNet-50 2x224 + 6x96 batch 32), multi-crop augmentation per core (ours vs
lightly's SwaVTransform), Sinkhorn B=4096 K=3000 (ours vs the naive formula; alone and beside 1 and
2 busy processes). `--only contention`: the ResNet-18 step beside 0, 1 and 2 busy processes, the
default thread budget vs each fixed count, ours and lightly's. Peak memory of each
side is measured in a fresh subprocess (--memory).

The training steps run each side in its own process, stepped in turn from this one: a library's
process-wide settings (ours keeps the memory a step frees, `swav.engine.host_memory`, as
`swav pretrain` does on the CPU) then stay its own. lightly's step is timed as it ships and,
in a third process, with our memory setting too. The other parts run both sides in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def timeit(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def alternate(a, b, rounds: int, reps: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(rounds):
        ta += timeit(a, reps)
        tb += timeit(b, reps)
    return ta, tb


# ------------------------------------------------------------------------------------ peak


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` GFLOP/s of an n x n matmul (a smaller matrix where it is very slow,
    e.g. bf16 emulated on a CPU without bf16 instructions)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    small = a[:256, :256].contiguous(), b[:256, :256].contiguous()
    t = min(timeit(lambda: small[0] @ small[1], 2))
    if t * (n / 256) ** 3 > 2.0:  # the full size would take over 2 s a product
        a, b, n = small[0], small[1], 256
    a @ b
    best = min(timeit(lambda: a @ b, reps))
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------ sinkhorn


def naive_sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """The formula of the paper written naively: exp, then alternating normalisations."""
    q = torch.exp(scores / eps).t()
    k, b = q.shape
    q = q / torch.sum(q)
    for _ in range(iters):
        q = q / torch.sum(q, dim=1, keepdim=True)
        q = q / k
        q = q / torch.sum(q, dim=0, keepdim=True)
        q = q / b
    q = q * b
    return q.t()


def bench_sinkhorn(rounds=5, reps=3) -> dict:
    """Ours vs the naive formula, alone and with 1 and 2 busy processes beside it (the
    machine a user shares)."""
    from swav import sinkhorn

    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(4096, 128, generator=g), dim=1)
    c = F.normalize(torch.randn(3000, 128, generator=g), dim=1)
    s = z @ c.t()
    assert torch.allclose(sinkhorn(s), naive_sinkhorn(s), atol=1e-5)
    out: dict = {"B": 4096, "K": 3000, "iterations": 3, "dtype": "fp32"}
    for load in (0, 1, 2):
        with busy(load):
            ta, tb = alternate(lambda: sinkhorn(s), lambda: naive_sinkhorn(s), rounds, reps)
        ours, naive = statistics.median(ta), statistics.median(tb)
        key = "" if load == 0 else f"_busy{load}"
        out[f"ours_ms{key}"] = round(ours * 1e3, 1)
        out[f"naive_ms{key}"] = round(naive * 1e3, 1)
        out[f"speedup{key}"] = round(naive / ours, 2)
    return out


@contextlib.contextmanager
def busy(n: int):
    """``n`` processes that keep a core each busy (a spinning loop) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------ multi-crop


def test_jpeg() -> bytes:
    """A real photo (an Imagenette image) resized to 500 x 375, as JPEG quality 90."""
    from PIL import Image

    from swav.data.images import load_rgb
    from swav.data.sources import open_source

    src = open_source(str(SHARED / "imagenette-96.tar.gz"), "val")
    img = load_rgb(src[0][0]).resize((500, 375), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def lightly_transform():
    from lightly.transforms.swav_transform import SwaVTransform

    return SwaVTransform(
        crop_sizes=(224, 96),
        crop_counts=(2, 6),
        crop_min_scales=(0.14, 0.05),
        crop_max_scales=(1.0, 0.14),
        hf_prob=0.5,
        vf_prob=0.0,
        rr_prob=0.0,
        cj_prob=0.8,
        cj_strength=1.0,
        cj_bright=0.8,
        cj_contrast=0.8,
        cj_sat=0.8,
        cj_hue=0.2,
        random_gray_scale=0.2,
        gaussian_blur=0.5,
        sigmas=(0.1, 2.0),
    )


def bench_multicrop(rounds=5, reps=20) -> dict:
    from swav.data.images import load_rgb
    from swav.data.multicrop import MultiCrop

    torch.set_num_threads(1)
    jpeg = test_jpeg()
    ours = MultiCrop()
    theirs = lightly_transform()
    a = lambda: ours(load_rgb(jpeg))  # noqa: E731
    b = lambda: theirs(load_rgb(jpeg))  # noqa: E731
    assert len(a()) == len(b()) == 8
    ta, tb = alternate(a, b, rounds, reps)
    ours_ips, theirs_ips = 1 / statistics.median(ta), 1 / statistics.median(tb)
    return {
        "crops": "2x224 + 6x96",
        "image": "500x375 JPEG (decode included)",
        "threads": 1,
        "ours_images_per_s": round(ours_ips, 1),
        "lightly_images_per_s": round(theirs_ips, 1),
        "speedup": round(ours_ips / theirs_ips, 2),
    }


# ------------------------------------------------------------------------------------ conv

# (batch, channels in, map size, channels out, kernel, stride): the convolutions of ResNet-18 on
# 2 x 64 px + 4 x 32 px crops and of ResNet-50 on 6 x 96 px crops, batched per resolution
CONV_SHAPES = [
    (256, 512, 1, 512, 3, 1),
    (128, 512, 2, 512, 3, 1),
    (256, 256, 2, 256, 3, 1),
    (256, 256, 2, 512, 3, 2),
    (128, 256, 4, 512, 3, 2),
    (256, 128, 2, 256, 1, 2),
    (192, 512, 3, 512, 3, 1),
    (192, 512, 6, 512, 3, 2),
    (192, 2048, 3, 512, 1, 1),
    (128, 256, 4, 256, 3, 1),
    (256, 128, 4, 128, 3, 1),
    (192, 256, 6, 256, 3, 1),
    (128, 128, 8, 128, 3, 1),
]


def bench_conv(rounds=3, reps=3) -> dict:
    """Forward + backward (input and weight gradients) of one convolution, fp32, channels-last:
    oneDNN (``F.conv2d``) against the tap-by-tap matrix products of ``swav.model.conv``."""
    from swav.model.conv import tap_conv2d, uses_tap_path

    g = torch.Generator().manual_seed(0)
    rows = []
    for n, c, hw, o, k, s in CONV_SHAPES:
        x = torch.randn(n, c, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(o, c, k, k, generator=g) * 0.01).contiguous(
            memory_format=torch.channels_last
        )
        x.requires_grad_()
        w.requires_grad_()
        grad = torch.randn_like(F.conv2d(x, w, None, s, k // 2))

        def run(conv, x=x, w=w, s=s, p=k // 2, grad=grad):
            return lambda: torch.autograd.grad(conv(x, w, None, s, p), (x, w), grad)

        ta, tb = alternate(run(tap_conv2d), run(F.conv2d), rounds, reps)
        rows.append(
            {
                "shape": f"{n}x{c}x{hw}x{hw} -> {o}, {k}x{k} stride {s}",
                "tap_ms": round(statistics.median(ta) * 1e3, 1),
                "onednn_ms": round(statistics.median(tb) * 1e3, 1),
                "speedup": round(statistics.median(tb) / statistics.median(ta), 2),
                "tap_path_used": uses_tap_path(hw, hw, (k, k), (s, s), (k // 2, k // 2)),
            }
        )
    return {"what": "forward + backward, fp32, channels-last", "shapes": rows}


# ------------------------------------------------------------------------------------ train step


SETUPS = {
    "resnet18": dict(
        arch="resnet18", feat=512, crops=[(2, 64), (4, 32)], batch=64, rounds=12, reps=2
    ),
    "resnet50": dict(
        arch="resnet50", feat=2048, crops=[(2, 224), (6, 96)], batch=32, rounds=3, reps=1
    ),
}


def make_crops(setup, channels_last: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, size in setup["crops"]:
        for _ in range(n):
            x = torch.randn(setup["batch"], 3, size, size, generator=g)
            out.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return out


def our_step(setup):
    """Our training step as `swav pretrain` runs it on the CPU: channels-last, bf16 autocast
    where the CPU has bf16 instructions, and the memory a step frees kept for the next
    (process-wide: a peer stepped in the same process gets it too)."""
    from swav.engine.host_memory import keep_freed_memory
    from swav.engine.optim import build_optimizer
    from swav.engine.runtime import resolve_precision
    from swav.model import build_model
    from swav.objective.swav_loss import SwAVConfig, SwAVLoss

    keep_freed_memory()
    model = build_model(setup["arch"], 2048, 128, 3000).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "lars", 0.1)
    crops = make_crops(setup, True)
    dtype = resolve_precision("auto", torch.device("cpu"))
    n_crops = len(crops)
    objective = SwAVLoss(SwAVConfig(crops_for_assign=[0, 1]), model.embedding_dim)

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(crops)
        loss = objective(out, model.prototypes, setup["batch"], epoch=0).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step.model, step.crops, step.n_crops = model, crops, n_crops
    step.precision = "bf16" if dtype is torch.bfloat16 else "fp32"
    return step


def lightly_step(setup):
    import torchvision
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
    from lightly.utils.lars import LARS

    from swav.engine.runtime import resolve_precision

    class LightlySwaV(nn.Module):  # the structure of lightly's SwaV example
        def __init__(self):
            super().__init__()
            resnet = getattr(torchvision.models, setup["arch"])()
            self.backbone = nn.Sequential(*list(resnet.children())[:-1])
            self.projection_head = SwaVProjectionHead(setup["feat"], 2048, 128)
            self.prototypes = SwaVPrototypes(128, n_prototypes=3000)

        def forward(self, x):
            x = self.backbone(x).flatten(start_dim=1)
            x = self.projection_head(x)
            x = F.normalize(x, dim=1, p=2)
            return self.prototypes(x)

    model = LightlySwaV()
    criterion = SwaVLoss()
    opt = LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    crops = make_crops(setup, False)

    # the same precision as ours: bf16 autocast where the CPU has bf16 instructions (as
    # Lightning's precision="bf16-mixed" runs lightly's training step), fp32 otherwise
    dtype = resolve_precision("auto", torch.device("cpu"))

    def step():
        model.prototypes.normalize()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outs = [model(c) for c in crops]
            loss = criterion(outs[:2], outs[2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step.precision = "bf16" if dtype is torch.bfloat16 else "fp32"
    return step


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench_contention(steps: int = 8) -> dict:
    """The ResNet-18 step (2x64 + 4x32, batch 64) with 0, 1 and 2 busy processes beside it:
    ours with the default budget (every core, then the thread count the run's tuner keeps),
    with each fixed count, and lightly's step with each fixed count (its default is every
    core). Images per second over the timed steps. The default's trial (its steps with each
    count) is timed too; a run makes one every 10 minutes at most, so its rate over 10 minutes
    is the trial's images plus the kept count's rate for the rest."""
    import swav.engine.threads as tuning
    from swav.engine.runtime import usable_cores
    from swav.engine.threads import RETRY_AFTER_S, ThreadTuner, candidates_for

    cores = usable_cores()
    fixed = candidates_for(cores)
    setup = SETUPS["resnet18"]
    torch.manual_seed(0)
    ours, theirs = our_step(setup), lightly_step(setup)
    images = setup["batch"]

    def rate(step, threads):
        torch.set_num_threads(threads)
        step()  # settles the count (and the allocator)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return images * steps / (time.perf_counter() - t0)

    def default(step):
        """(trial seconds, trial steps, kept count, the kept count's rate)."""
        torch.set_num_threads(cores)
        tuner, n, t0 = ThreadTuner(fixed, torch.set_num_threads), 0, time.perf_counter()
        while True:
            t = time.perf_counter()
            step()
            n += 1
            if tuner.step_done(time.perf_counter() - t) is not None:
                break
        trial = time.perf_counter() - t0
        return trial, n, tuner.threads, rate(step, tuner.threads)

    out: dict = {
        "setup": "resnet18 2x64 + 4x32, batch 64",
        "cores": cores,
        "loads": {},
        "peer_note": "Both steps run in one process here, so lightly's runs with our "
        "freed-memory setting too.",
    }
    start_after = tuning.START_AFTER_S
    tuning.START_AFTER_S = 0.0  # the run's tuner starts after 30 s; here at once
    try:
        for load in (0, 1, 2):
            with busy(load):
                row: dict = {f"ours_{n}_threads": round(rate(ours, n), 1) for n in fixed}
                trial, n_trial, kept, kept_rate = default(ours)
                row |= {f"lightly_{n}_threads": round(rate(theirs, n), 1) for n in fixed}
            window = RETRY_AFTER_S
            over_window = (n_trial * images + kept_rate * (window - trial)) / window
            best = max(row[f"ours_{n}_threads"] for n in fixed)
            row |= {
                "ours_default_trial_s": round(trial, 1),
                "ours_default_trial_steps": n_trial,
                "ours_default_kept": kept,
                "ours_default_kept_rate": round(kept_rate, 1),
                "ours_default_10min": round(over_window, 1),
                "best_fixed_vs_default": round(best / over_window, 2),
                "ours_default_vs_lightly_default": round(
                    over_window / row[f"lightly_{cores}_threads"], 2
                ),
            }
            out["loads"][f"{load}_busy"] = row
            print("contention", load, json.dumps(row), flush=True)
    finally:
        tuning.START_AFTER_S = start_after
        torch.set_num_threads(cores)
    return out


STEP_SIDES = ("ours", "lightly", "lightly_kept")
"""The processes of a step benchmark: ours, lightly's as it ships, lightly's with our memory
setting (``swav.engine.host_memory``)."""


class SideProcess:
    """One side of a step benchmark in its own Python process (``perf.py --worker SIDE:NAME``),
    asked over a pipe for its FLOP count or for N timed steps."""

    def __init__(self, side: str, name: str) -> None:
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", f"{side}:{name}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._answer()

    def _answer(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise RuntimeError(f"the {self.side} process ended (exit code {self.proc.wait()})")

    def ask(self, what: str):
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def step_worker(spec: str) -> None:
    """The loop of a ``SideProcess``: builds its step, then answers 'flops' or a step count."""
    side, name = spec.split(":")
    torch.manual_seed(0)
    if side == "lightly_kept":
        from swav.engine.host_memory import keep_freed_memory

        keep_freed_memory()
    step = (our_step if side == "ours" else lightly_step)(SETUPS[name])

    def say(value) -> None:
        print("@@ " + json.dumps(value), flush=True)

    say({"precision": step.precision})
    for line in sys.stdin:
        ask = line.strip()
        say(step_flops(step) if ask == "flops" else timeit(step, int(ask)))


def bench_step(name: str, peaks: dict) -> dict:
    setup = SETUPS[name]
    sides: dict[str, SideProcess] = {}
    try:
        for side in STEP_SIDES:  # one at a time, so that building one does not slow another
            sides[side] = SideProcess(side, name)
        # FLOPs as performed (our small maps skip the padding taps, see swav.model.conv) and as
        # usually counted (every convolution at full size: the peer's count of the same network)
        flops, nominal = sides["ours"].ask("flops"), sides["lightly"].ask("flops")
        for proc in sides.values():
            proc.ask("1")  # warm-up
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(setup["rounds"]):
            for side, proc in sides.items():
                times[side] += proc.ask(str(setup["reps"]))
    finally:
        for proc in sides.values():
            proc.close()
    images, reps = setup["batch"], setup["reps"]
    med = {side: statistics.median(t) for side, t in times.items()}
    ta, tb = times["ours"], times["lightly"]
    # the ratio within each round (the sides back to back)
    per_round = [
        statistics.median(tb[i : i + reps]) / statistics.median(ta[i : i + reps])
        for i in range(0, len(ta), reps)
    ]
    achieved = flops / med["ours"] / 1e9
    precision = sides["ours"].info["precision"]
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    return {
        "arch": setup["arch"],
        "crops": " + ".join(f"{n}x{s}" for n, s in setup["crops"]),
        "batch": images,
        "steps_timed_each": len(ta),
        "precision_ours": precision,
        "precision_lightly": sides["lightly"].info["precision"],
        "processes": "one per side, stepped in turn",
        "ours_images_per_s": round(images / med["ours"], 1),
        "lightly_images_per_s": round(images / med["lightly"], 1),
        "speedup": round(med["lightly"] / med["ours"], 2),
        "speedup_per_round": [round(r, 2) for r in per_round],
        "lightly_kept_images_per_s": round(images / med["lightly_kept"], 1),
        "speedup_vs_lightly_kept": round(med["lightly_kept"] / med["ours"], 2),
        "flops_per_step_G": round(flops / 1e9, 1),
        "nominal_flops_per_step_G": round(nominal / 1e9, 1),
        "achieved_GFLOPs": round(achieved, 1),
        "lightly_achieved_GFLOPs": round(nominal / med["lightly"] / 1e9, 1),
        "peak_GFLOPs": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 2),
    }


# ------------------------------------------------------------------------------------ memory


def memory_of(part: str) -> float:
    """Peak RSS (MB) of a fresh process that runs one side of one part: its VmHWM, which starts
    anew at exec (ru_maxrss would carry over the parent's high-water mark)."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import perf; "
        f"perf._memory_target({part!r}); "
        "print('VMHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split("VMHWM")[-1].split()[0]) / 1024.0


def _memory_target(part: str) -> None:
    side, what = part.split(":")
    if what == "sinkhorn":
        from swav import sinkhorn

        s = (
            F.normalize(torch.randn(4096, 128), dim=1)
            @ F.normalize(torch.randn(3000, 128), dim=1).t()
        )
        (sinkhorn if side == "ours" else naive_sinkhorn)(s)
    elif what == "multicrop":
        from swav.data.images import load_rgb
        from swav.data.multicrop import MultiCrop

        jpeg = test_jpeg()
        t = MultiCrop() if side == "ours" else lightly_transform()
        for _ in range(5):
            t(load_rgb(jpeg))
    else:
        step = (our_step if side == "ours" else lightly_step)(SETUPS[what])
        step()
        step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="parts: peak sinkhorn multicrop conv resnet18 resnet50 contention",
    )
    ap.add_argument("--memory", action="store_true", help="also measure peak memory per side")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a SideProcess
    ap.add_argument(
        "--out",
        default=None,
        help="default: results/perf_amx.json, perf_avx512.json or perf_avx2.json (by CPU kind)",
    )
    args = ap.parse_args()
    if args.worker:
        step_worker(args.worker)
        return
    parts = args.only or ["peak", "sinkhorn", "multicrop", "conv", "resnet18", "resnet50"]
    from swav.engine.runtime import cpu_kind

    kind, kind_words = cpu_kind()
    out_path = Path(args.out or HERE / "results" / f"perf_{kind}.json")
    record = json.loads(out_path.read_text()) if out_path.exists() else {}
    record["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_instructions": kind_words,
    }
    if "peak" in parts or "peak" not in record:
        record["peak"] = {
            "fp32": round(matmul_peak(torch.float32), 1),
            "bf16": round(matmul_peak(torch.bfloat16), 1),
        }
        print("matmul peak GFLOP/s", record["peak"], flush=True)
    for part in parts:
        if part == "peak":
            continue
        threads = torch.get_num_threads()
        if part == "sinkhorn":
            r = bench_sinkhorn()
        elif part == "multicrop":
            r = bench_multicrop()
            torch.set_num_threads(threads)
        elif part == "conv":
            r = bench_conv()
        elif part == "contention":
            r = bench_contention()
        else:
            r = bench_step(part, record["peak"])
        if args.memory and part not in ("conv", "contention"):
            r["peak_rss_mb_ours"] = round(memory_of(f"ours:{part}"), 0)
            r["peak_rss_mb_peer"] = round(memory_of(f"peer:{part}"), 0)
        r["command"] = f"python benchmarks/perf.py --only {part}" + (
            " --memory" if args.memory and part not in ("conv", "contention") else ""
        )
        record[part] = r
        print(part, json.dumps(r), flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    np.random.seed(0)
    main()
