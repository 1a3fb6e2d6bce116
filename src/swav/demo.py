"""The main job: pretrain on the embedded digits, then show what was learned.

Trains with the ``demo`` preset, then evaluates on the held-out split, next to a randomly
initialised model of the same architecture: kNN accuracy of the backbone features, and how well
the prototypes cluster the classes (NMI, ARI, Hungarian-matched accuracy).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from torch import nn

from swav.config import Config, build_config
from swav.data.sources import heldout_source, training_source
from swav.data.transforms import EvalTransform
from swav.engine.run_dir import RunDir
from swav.engine.train import pretrain
from swav.eval.clustering import cluster_metrics
from swav.eval.knn import knn_accuracy
from swav.model.config import build_from_config
from swav.model.features import Features, extract_features

log = logging.getLogger(__name__)


def heldout_features(
    model: nn.Module, cfg: Config, eval_limit: int = 0
) -> tuple[Features, Features]:
    """Features of the configured training split and of the held-out split."""
    seed = cfg.train.seed
    train = training_source(cfg.data, seed)
    test = heldout_source(cfg.data, seed, eval_limit)
    mc = cfg.multicrop
    tf = EvalTransform.for_size(mc.evaluation_size, mc.mean, mc.std)
    return extract_features(model, train, tf).valid(), extract_features(model, test, tf).valid()


def evaluate_model(
    model: nn.Module, cfg: Config, ks: tuple[int, ...] = (10, 20), eval_limit: int = 0
) -> dict[str, Any]:
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
    """Pretrain with the ``demo`` preset, evaluate next to random init; the report dict (also
    written to ``RUN_DIR/demo_results.json``)."""
    cfg = build_config("demo", [f"run_dir={run_dir}", *(overrides or [])])
    t0 = time.time()
    result = pretrain(cfg, progress=progress)
    train_s = time.time() - t0
    run = RunDir.of(cfg.run_dir)
    if result.already_finished and run.demo_results.exists():
        return {**json.loads(run.demo_results.read_text()), "already_finished": True}
    assert result.model is not None
    trained = result.model.cpu().eval()
    torch.manual_seed(cfg.train.seed)
    random_model = build_from_config(cfg.model).eval()
    report = {
        "trained": evaluate_model(trained, cfg),
        "random": evaluate_model(random_model, cfg),
        "train_seconds": round(train_s, 1),
        "epochs": result.epochs_done,
        "final_loss": result.last_loss,
        "run_dir": str(run.path.resolve()),
    }
    run.demo_results.write_text(json.dumps(report, indent=2))
    return report
