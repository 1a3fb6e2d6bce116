"""Quality benchmark: pretrain a preset on CPU for a few epochs, then compare the trained
backbone with a randomly initialised one under kNN (k = 20, 200), the fast linear probe and
prototype clustering (NMI). Records the command, run time and peak memory.

    python benchmarks/quality.py --name cifar10 --preset cifar10 -- \
        data.source=../shared/data/cifar10-jpg.tar.gz data.limit=10000 train.epochs=4 ...
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from swav.config import build_config
from swav.demo import heldout_features
from swav.engine.train import pretrain
from swav.eval.clustering import cluster_metrics
from swav.eval.knn import knn_accuracy
from swav.eval.linear import linear_probe_features
from swav.model.config import build_from_config

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def evaluate(model, cfg, eval_limit: int, probe_epochs: int) -> dict:
    t = time.time()
    ftr, fte = heldout_features(model, cfg, eval_limit)
    knn = knn_accuracy(ftr.features, ftr.labels, fte.features, fte.labels, (20, 200))
    probe = linear_probe_features(
        ftr.features, ftr.labels, fte.features, fte.labels, epochs=probe_epochs
    )
    out = {
        "knn_k20": knn[20]["top1"],
        "knn_k200": knn[200]["top1"],
        "linear_fast": probe.top1,
        "n_train": len(ftr.labels),
        "n_test": len(fte.labels),
    }
    if fte.scores is not None:
        c = cluster_metrics(fte.labels.numpy(), fte.scores.argmax(1).numpy())
        out.update(nmi=c["nmi"], prototypes_used=c["prototypes_used"])
    out["eval_seconds"] = round(time.time() - t, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--eval-limit", type=int, default=0)
    ap.add_argument("--probe-epochs", type=int, default=50)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    run_dir = args.run_dir or f"runs/bench_{args.name}"
    cfg = build_config(args.preset, [*args.overrides, f"run_dir={run_dir}"])
    torch.manual_seed(cfg.train.seed)
    t = time.time()
    result = pretrain(cfg, progress=False)
    train_s = time.time() - t
    trained = result.model.cpu().eval()
    torch.manual_seed(cfg.train.seed)
    random_model = build_from_config(cfg.model).eval()
    record = {
        "name": args.name,
        "command": "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "preset": args.preset,
        "overrides": args.overrides,
        "epochs": result.epochs_done,
        "iterations": result.iterations,
        "train_seconds": round(train_s, 1),
        "final_loss": result.last_loss,
        "threads": torch.get_num_threads(),
        "trained": evaluate(trained, cfg, args.eval_limit, args.probe_epochs),
        "random_init": evaluate(random_model, cfg, args.eval_limit, args.probe_epochs),
    }
    record["peak_rss_mb"] = round(peak_rss_mb(), 0)
    out = HERE / "results" / f"quality_{args.name}.json"
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
