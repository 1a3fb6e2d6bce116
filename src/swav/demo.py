"""The main job: pretrain on the embedded digits, then show what was learned.

Trains with the ``demo`` preset, then evaluates on the held-out split, next to a randomly
initialised model of the same architecture: kNN accuracy of the backbone features, and how well
the prototypes cluster the classes (NMI, ARI, Hungarian-matched accuracy).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from swav.config import Config, build_config
from swav.data.sources import limit_source, open_source
from swav.eval.clustering import cluster_metrics
from swav.eval.features import EvalTransform, extract_features
from swav.eval.knn import knn_accuracy

log = logging.getLogger(__name__)


def eval_transform_for(cfg: Config) -> EvalTransform:
    size = cfg.multicrop.sizes[0]
    small = size <= 64
    return EvalTransform(
        size, cfg.multicrop.mean, cfg.multicrop.std, crop_fraction=1.0 if small else 0.875
    )


def heldout_features(model, cfg: Config, eval_limit: int = 0):
    """Features of the configured training split and held-out split (``Features`` pair)."""
    d = cfg.data
    seed = cfg.train.seed
    train = limit_source(open_source(d.source, d.split, d.root, d.download, seed), d.limit, seed)
    test = limit_source(
        open_source(d.source, d.eval_split, d.root, d.download, seed), eval_limit, seed
    )
    tf = eval_transform_for(cfg)
    return extract_features(model, train, tf).valid(), extract_features(model, test, tf).valid()


def evaluate_model(model, cfg: Config, ks=(10, 20), eval_limit: int = 0) -> dict[str, Any]:
    """kNN (train split -> eval split) and prototype clustering on the eval split."""
    ftr, fte = heldout_features(model, cfg, eval_limit)
    knn = knn_accuracy(ftr.features, ftr.labels, fte.features, fte.labels, ks)
    out: dict[str, Any] = {f"knn_top1_k{k}": v["top1"] for k, v in knn.items()}
    if fte.scores is not None:
        out.update(
            cluster_metrics(fte.labels.numpy(), fte.scores.argmax(1).numpy(), fte.scores.shape[1])
        )
    out["n_train"], out["n_test"] = len(ftr.labels), len(fte.labels)
    return out


def run_demo(
    run_dir: str = "runs/demo", overrides: list[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    from swav.engine.train import build_swav_model, pretrain

    cfg = build_config("demo", [f"run_dir={run_dir}", *(overrides or [])])
    t0 = time.time()
    result = pretrain(cfg, progress=progress)
    train_s = time.time() - t0
    trained = result.model.cpu().eval()
    torch.manual_seed(cfg.train.seed)
    random_model = build_swav_model(cfg).eval()
    report = {
        "trained": evaluate_model(trained, cfg),
        "random": evaluate_model(random_model, cfg),
        "train_seconds": round(train_s, 1),
        "epochs": result.epochs_done,
        "final_loss": result.last_loss,
        "run_dir": str(Path(cfg.run_dir).resolve()),
    }
    (Path(cfg.run_dir) / "demo_results.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    rows = [
        ("kNN top-1, k=10 (%)", "knn_top1_k10", "{:.1f}"),
        ("kNN top-1, k=20 (%)", "knn_top1_k20", "{:.1f}"),
        ("prototype clusters: NMI", "nmi", "{:.3f}"),
        ("prototype clusters: ARI", "ari", "{:.3f}"),
        ("prototype clusters: Hungarian acc. (%)", "hungarian_acc", "{:.1f}"),
        ("prototypes in use", "prototypes_used", "{}"),
    ]
    tr, rd = report["trained"], report["random"]
    w = max(len(r[0]) for r in rows)
    title = f"held-out digits ({tr['n_test']} images)"
    lines = [f"{title:<{w}}  {'SwAV':>8}  {'random init':>11}"]
    for name, key, fmt in rows:
        if key in tr:
            lines.append(f"{name:<{w}}  {fmt.format(tr[key]):>8}  {fmt.format(rd[key]):>11}")
    return "\n".join(lines)
