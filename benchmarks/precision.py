"""bf16 autocast against fp32: does the loss of a bf16 run track the fp32 run within noise?

Trains the same preset four times with the training engine, ``--steps`` iterations each, the
loss of every iteration recorded: fp32 and bf16 from the same seed (same initialisation, data
order and crops), and fp32 from two more seeds. The noise level is how far apart fp32 runs of
different seeds are (the largest of the three pairs); bf16 tracks fp32 when its distance to the
fp32 run of its own seed is no larger.
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
        runs = {}
        for precision, seed in [("fp32", 0), ("bf16", 0), ("fp32", 1), ("fp32", 2)]:
            runs[f"{precision}_seed{seed}"] = run(
                args.preset, args.overrides, precision, seed, args.steps, root
            )
    curves = {name: smooth(loss, args.window) for name, (loss, _) in runs.items()}

    def gap(x: str, y: str) -> dict:
        d = np.abs(curves[x] - curves[y])
        return {"mean": round(float(d.mean()), 4), "max": round(float(d.max()), 4)}

    bf16_gap = gap("bf16_seed0", "fp32_seed0")
    seed_gaps = {
        f"{x} vs {y}": gap(x, y)
        for x, y in [
            ("fp32_seed1", "fp32_seed0"),
            ("fp32_seed2", "fp32_seed0"),
            ("fp32_seed2", "fp32_seed1"),
        ]
    }
    noise = max(g["mean"] for g in seed_gaps.values())
    record = {
        "command": "python benchmarks/precision.py "
        + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "preset": args.preset,
        "overrides": args.overrides,
        "steps": args.steps,
        "window": args.window,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds": {name: round(t, 1) for name, (_, t) in runs.items()},
        "final_loss": {
            name: round(float(loss[-args.window :].mean()), 4) for name, (loss, _) in runs.items()
        },
        "gap_bf16_vs_fp32": bf16_gap,
        "gaps_between_fp32_seeds": seed_gaps,
        "noise_mean_gap": noise,
        "within_noise": bool(bf16_gap["mean"] <= noise),
        "loss": {name: loss.tolist() for name, (loss, _) in runs.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(np.arange(args.window - 1, args.window - 1 + len(curve)), curve, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving average of {args.window})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    summary = {k: v for k, v in record.items() if k != "loss"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
