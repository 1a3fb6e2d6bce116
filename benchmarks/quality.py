"""Quality benchmark: does pretraining learn, at a budget a 2-core CPU affords?

Trains one configuration (a preset, or the recipe ``swav pretrain --data`` would choose, plus
overrides) epoch by epoch, and after every epoch measures the backbone under kNN (k = 20, 200)
on held-out images; at the end also the fast linear probe and prototype clustering (NMI). The
same network randomly initialised is measured once. With ``--peer lightly`` it trains lightly's
SwAV pieces (``SwaVProjectionHead``, ``SwaVPrototypes``, ``SwaVLoss``, lightly's LARS and
queue) on the same network, crops, batches and number of steps, with the optimiser, learning
rate, prototypes and schedule of lightly's own ImageNet benchmark script (its warm-up and
queue start are scaled to the shorter run), and records it beside ours.

    python benchmarks/quality.py --name imagenette64 --data ../shared/data/imagenette-96.tar.gz \
        --peer lightly -- multicrop.sizes=[64,32] train.epochs=12

Results go to benchmarks/results/quality_<name>.json (``python benchmarks/report.py`` renders
them into RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swav import pretrain
from swav.config import Config, build_config, resolve_run_length
from swav.demo import heldout_features
from swav.engine.checkpoint import safe_load
from swav.engine.recipe import suggest_recipe
from swav.engine.run_dir import RunDir
from swav.engine.runtime import cpu_kind
from swav.eval.clustering import cluster_metrics
from swav.eval.knn import knn_accuracy
from swav.eval.linear import linear_probe_features
from swav.interop.checkpoints import initial_weights, load_checkpoint
from swav.model.config import build_from_config
from swav.model.warm_start import warm_start
from swav.run_length import duration

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


TRAIN_LIMIT = 0
"""Training images in the kNN bank and the probe's training set (0: all; --train-limit)."""


def evaluate(model: nn.Module, cfg: Config, eval_limit: int, probe_epochs: int = 0) -> dict:
    """kNN (k = 20, 200) on held-out images; with ``probe_epochs`` also the fast linear probe
    and, when the model has prototypes, their clustering NMI."""
    t = time.time()
    bank = cfg
    if TRAIN_LIMIT:
        bank = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit=TRAIN_LIMIT))
    ftr, fte = heldout_features(model, bank, eval_limit)
    knn = knn_accuracy(ftr.features, ftr.labels, fte.features, fte.labels, (20, 200))
    out: dict[str, Any] = {"knn_k20": knn[20]["top1"], "knn_k200": knn[200]["top1"]}
    if probe_epochs:
        probe = linear_probe_features(
            ftr.features, ftr.labels, fte.features, fte.labels, epochs=probe_epochs
        )
        out["linear_fast"] = probe.top1
        if fte.scores is not None:
            c = cluster_metrics(fte.labels.numpy(), fte.scores.argmax(1).numpy())
            out.update(nmi=c["nmi"], prototypes_used=c["prototypes_used"])
    out["n_train"], out["n_test"] = len(ftr.labels), len(fte.labels)
    out["eval_seconds"] = round(time.time() - t, 1)
    return out


def loss_health(losses: list[tuple[int, int, float]], ln_k: float, warmup: int) -> dict:
    """Mean loss per epoch, and the share of iterations after the warm-up whose loss sat within
    1 % of ln K (uniform codes), from (iteration, epoch, loss) rows."""
    by_epoch: dict[int, list[float]] = {}
    for _, epoch, loss in losses:
        by_epoch.setdefault(epoch, []).append(loss)
    late = [loss for it, _, loss in losses if it >= warmup]
    near = sum(abs(v - ln_k) <= 0.01 * ln_k for v in late)
    return {
        "ln_k": ln_k,
        "epoch_loss": {e: sum(v) / len(v) for e, v in sorted(by_epoch.items())},
        "after_warmup_near_ln_k": near / max(1, len(late)),
    }


def warmup_iterations(cfg: Config, iters_per_epoch: int) -> int:
    resolved, _ = resolve_run_length(cfg, iters_per_epoch)
    return int(float(resolved.optim.warmup_epochs) * iters_per_epoch)


def run_ours(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    if duration(cfg.train.time_budget):
        return run_ours_budget(cfg, args)
    curve, t0 = [], time.time()
    result = None
    every = max(1, args.eval_every)
    stops = [e for e in range(1, cfg.train.epochs + 1) if e % every == 0 or e == cfg.train.epochs]
    for epoch in stops:
        result = pretrain(cfg, progress=False, stop_after_epoch=epoch)
        assert result.model is not None
        row = {"epoch": epoch, "train_seconds": round(time.time() - t0, 1)}
        final = epoch == cfg.train.epochs
        model = result.model.cpu().eval()
        row.update(evaluate(model, cfg, args.eval_limit, args.probe_epochs if final else 0))
        curve.append(row)
        print(json.dumps(row), flush=True)
        t0 += row["eval_seconds"]  # training time only
    assert result is not None
    run = RunDir.of(cfg.run_dir)
    rows = [(m["iteration"], m["epoch"], m["loss"]) for m in run.read_metrics() if "kind" not in m]
    iters = result.iterations // max(1, cfg.train.epochs)
    ln_k = sum(math.log(k) for k in cfg.model.n_prototypes) / len(cfg.model.n_prototypes)
    return {
        "curve": curve,
        "final": curve[-1],
        "iterations": result.iterations,
        "healthy": result.healthy,
        "recoveries": result.recoveries,
        "loss": loss_health(rows, ln_k, warmup_iterations(cfg, iters)),
    }


def run_ours_budget(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """A run with a time budget, trained in one go as a user would (its epochs are its own
    plan), keeping a checkpoint every ``--eval-every`` epochs; the checkpoints are measured
    afterwards, so that the evaluations take none of the budget."""
    every = max(1, args.eval_every)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_every=every))
    t0 = time.time()
    result = pretrain(cfg, progress=False)
    wall = time.time() - t0
    run = RunDir.of(cfg.run_dir)
    records = run.read_metrics()
    seconds = {m["epoch"]: m.get("seconds") for m in records if m.get("kind") == "epoch"}
    curve = []
    done = result.epochs_done
    for epoch in [*range(every, done, every), done]:
        path = run.periodic_checkpoint(epoch) if epoch < done else run.checkpoint
        if not path.exists():
            continue
        model = build_from_config(cfg.model)
        model.load_state_dict(safe_load(path)["model"])
        row = {"epoch": epoch, "train_seconds": seconds.get(epoch)}
        final = epoch == done or args.probe_every
        row.update(evaluate(model.eval(), cfg, args.eval_limit, args.probe_epochs if final else 0))
        curve.append(row)
        print(json.dumps(row), flush=True)
    rows = [(m["iteration"], m["epoch"], m["loss"]) for m in records if "kind" not in m]
    iters = result.iterations // max(1, done)
    ln_k = sum(math.log(k) for k in cfg.model.n_prototypes) / len(cfg.model.n_prototypes)
    planned = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=done))
    return {
        "curve": curve,
        "final": curve[-1],
        "iterations": result.iterations,
        "budget_seconds": duration(cfg.train.time_budget),
        "wall_seconds": round(wall, 1),
        "healthy": result.healthy,
        "recoveries": result.recoveries,
        "loss": loss_health(rows, ln_k, warmup_iterations(planned, iters)),
    }


def minutes_to_reach(curve: list[dict[str, Any]], knn: float) -> float | None:
    """Training minutes until kNN (k = 20) first reaches ``knn``, interpolated between the
    measured epochs (None: never)."""
    before = (0.0, 0.0)
    for row in curve:
        t, v = float(row.get("train_seconds") or 0.0), float(row["knn_k20"])
        if v >= knn:
            t0, v0 = before
            share = (knn - v0) / (v - v0) if v > v0 and v0 < knn else 1.0
            return round((t0 + share * (t - t0)) / 60, 1)
        before = (t, v)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--preset", default=None, help="a preset (default: the --data recipe)")
    ap.add_argument("--data", default=None, help="data for the recipe (no preset)")
    ap.add_argument("--eval-limit", type=int, default=0)
    ap.add_argument(
        "--train-limit", type=int, default=0, help="training images in the kNN bank (0: all)"
    )
    ap.add_argument("--probe-epochs", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between kNN measurements")
    ap.add_argument(
        "--probe-every", action="store_true", help="the fast linear probe at every measurement"
    )
    ap.add_argument("--peer", choices=["none", "lightly", "only-lightly"], default="none")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    global TRAIN_LIMIT
    TRAIN_LIMIT = args.train_limit
    run_dir = args.run_dir or f"runs/bench_{args.name}"
    recipe: list[str] = []
    if args.preset is None:
        given = dict(o.split("=", 1) for o in args.overrides if "=" in o)
        budget = given.get("train.time_budget", "0" if "train.epochs" in given else None)
        arch = given.get("model.arch")
        if "model.init" in given and not arch:  # a warm start keeps the weights' architecture
            arch = load_checkpoint(given["model.init"], ignore=("prototypes", "fc")).arch
        r = suggest_recipe(args.data, "train", budget=budget, arch=arch)
        recipe = r.overrides() + (["train.time_budget=0"] if budget == "0" else [])
        print("\n".join(r.describe(given)), flush=True)  # the values used, the user's included
    cfg = build_config(args.preset, [*recipe, *args.overrides, f"run_dir={run_dir}"])
    torch.manual_seed(cfg.train.seed)
    random_model = build_from_config(cfg.model).eval()
    record: dict[str, Any] = {
        "name": args.name,
        "command": "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "preset": args.preset or "recipe",
        "settings": recipe + list(args.overrides),
        "threads": torch.get_num_threads(),
        "cpu": _cpu(),
        "random_init": evaluate(random_model, cfg, args.eval_limit, args.probe_epochs),
    }
    print(json.dumps(record["random_init"]), flush=True)
    if cfg.model.init:  # a warm start: the starting weights alone, before any training here
        start = build_from_config(cfg.model)
        warm_start(start, initial_weights(cfg.model.init), cfg.model.init)
        record["init_weights"] = evaluate(start.eval(), cfg, args.eval_limit, args.probe_epochs)
        print(json.dumps(record["init_weights"]), flush=True)
    out = HERE / "results" / f"quality_{args.name}.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    if args.peer != "only-lightly":
        record["ours"] = run_ours(cfg, args)
    if args.peer != "none":
        from lightly_swav import run_lightly

        record["lightly"] = run_lightly(
            cfg, args, evaluate, epochs=_ours_epochs(record, previous, cfg)
        )
    base = record["random_init"]["knn_k20"]
    for side in ("ours", "lightly"):
        if side in record:
            record[side]["minutes_to"] = {
                f"random+{d}": minutes_to_reach(record[side]["curve"], base + d) for d in (5, 10)
            }
    record["peak_rss_mb"] = round(peak_rss_mb(), 0)
    if _same_configuration(previous, cfg):
        # The same configuration measured in two sittings (ours, then the peer, or the other
        # way round): keep the side this run did not measure.
        for side in ("ours", "lightly"):
            if side not in record and side in previous:
                record[side] = previous[side]
        if args.peer == "only-lightly" and "command" in previous:
            record["peer_command"], record["command"] = record["command"], previous["command"]
        elif args.peer == "none" and "peer_command" in previous and "lightly" in record:
            record["peer_command"] = previous["peer_command"]
    out.write_text(json.dumps(record, indent=1))
    print(f"written {out}")


def _ours_epochs(record: dict, previous: dict, cfg: Config) -> int | None:
    """The epochs lightly's side trains: those of our run when it had a time budget (its own
    plan; this run's or, measured separately, the recorded one), else the configuration's."""
    if not duration(cfg.train.time_budget):
        return None
    ours = record.get("ours") or (
        previous.get("ours") if _same_configuration(previous, cfg) else None
    )
    if not ours:
        raise SystemExit(
            "a time-budget run: lightly's side trains as many epochs as ours did; run ours "
            "first (--peer none) with the same settings"
        )
    return int(ours["curve"][-1]["epoch"])


def _same_configuration(previous: dict, cfg: Config) -> bool:
    """Whether a recorded run trained the configuration ``cfg`` resolves to (its settings
    rebuilt; a recipe that changed since but gives the same values still matches)."""
    if "settings" not in previous:
        return False
    preset = None if previous.get("preset") in (None, "recipe") else previous["preset"]
    try:
        old = build_config(preset, [*previous["settings"], f"run_dir={cfg.run_dir}"])
    except Exception:  # settings this version no longer accepts
        return False
    return old.to_dict() == cfg.to_dict()


def _cpu() -> str:
    return cpu_kind()[1]


if __name__ == "__main__":
    main()
