"""bf16 autocast against fp32: does the loss of a bf16 run track the fp32 run within noise?

Trains the same preset three times with the training engine, ``--steps`` iterations each, the
loss of every iteration recorded: fp32 and bf16 from the same seed (same initialisation, data
order and crops), and fp32 from another seed. The noise level is how far the two fp32 runs are
apart; bf16 tracks fp32 when its distance to the fp32 run of its own seed is no larger.
Distances are taken between moving averages over ``--window`` iterations (single iterations
differ by the batch drawn, not by the precision).

    python benchmarks/precision.py                      # demo preset, 200 iterations
    python benchmarks/precision.py --preset cifar10 -- data.source=../shared/data/cifar10-jpg.tar.gz

On a CPU without bf16 instructions the bf16 run is emulated and slow (about 10x the fp32 time
for the demo preset); the comparison of the numbers is still what a bf16 machine computes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from swav.config import build_config
from swav.engine.train import pretrain

HERE = Path(__file__).resolve().parent


def losses(run_dir: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "kind" not in r and "loss" in r])


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(x, np.ones(window) / window, mode="valid")


def run(preset: str, overrides: list[str], precision: str, seed: int, steps: int, root: Path):
    run_dir = root / f"{precision}_seed{seed}"
    per_epoch = min(steps, 40)
    cfg = build_config(
        preset,
        [
            *overrides,
            f"train.precision={precision}",
            f"train.seed={seed}",
            f"train.iters_per_epoch={per_epoch}",
            f"train.epochs={-(-steps // per_epoch)}",
            "train.log_every=1",
            f"run_dir={run_dir}",
        ],
    )
    t = time.time()
    pretrain(cfg, progress=False)
    seconds = time.time() - t
    return losses(run_dir)[:steps], seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results" / "precision.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a, ta = run(args.preset, args.overrides, "fp32", 0, args.steps, root)
        b, tb = run(args.preset, args.overrides, "bf16", 0, args.steps, root)
        c, tc = run(args.preset, args.overrides, "fp32", 1, args.steps, root)
    sa, sb, sc = (smooth(x, args.window) for x in (a, b, c))
    bf16_gap = np.abs(sb - sa)
    seed_gap = np.abs(sc - sa)
    record = {
        "command": "python benchmarks/precision.py "
        + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "preset": args.preset,
        "overrides": args.overrides,
        "steps": int(len(a)),
        "window": args.window,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds": {
            "fp32_seed0": round(ta, 1),
            "bf16_seed0": round(tb, 1),
            "fp32_seed1": round(tc, 1),
        },
        "final_loss": {
            "fp32_seed0": round(float(a[-args.window :].mean()), 4),
            "bf16_seed0": round(float(b[-args.window :].mean()), 4),
            "fp32_seed1": round(float(c[-args.window :].mean()), 4),
        },
        "mean_gap_bf16_vs_fp32": round(float(bf16_gap.mean()), 4),
        "max_gap_bf16_vs_fp32": round(float(bf16_gap.max()), 4),
        "mean_gap_fp32_seed1_vs_seed0": round(float(seed_gap.mean()), 4),
        "max_gap_fp32_seed1_vs_seed0": round(float(seed_gap.max()), 4),
        "within_noise": bool(bf16_gap.mean() <= seed_gap.mean()),
        "loss": {"fp32_seed0": a.tolist(), "bf16_seed0": b.tolist(), "fp32_seed1": c.tolist()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, x in (("fp32, seed 0", a), ("bf16, seed 0", b), ("fp32, seed 1", c)):
        ax.plot(np.arange(args.window - 1, len(x)), smooth(x, args.window), label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving average of {args.window})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    summary = {k: v for k, v in record.items() if k != "loss"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
