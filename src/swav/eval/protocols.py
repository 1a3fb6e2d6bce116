"""The evaluation protocols as library calls: each loads a checkpoint and labelled data, runs one
protocol and returns (and optionally writes) a JSON-able result with the checkpoint, data,
protocol settings and seed. The ``swav eval`` commands are thin wrappers around these."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swav.data.multicrop import IMAGENET_MEAN, IMAGENET_STD
from swav.data.sources import ImageSource, open_source
from swav.eval.clustering import cluster_metrics
from swav.eval.features import EvalTransform, extract_features, extract_stage_features
from swav.eval.knn import knn_accuracy
from swav.eval.linear import linear_eval, linear_probe_features
from swav.eval.lowshot import DEFAULT_SHOTS, lowshot_svm
from swav.eval.semisup import balanced_subset, finetune, subset_from_file
from swav.interop.checkpoints import LoadedModel, load_checkpoint


@dataclass
class EvalData:
    train: ImageSource
    test: ImageSource
    transform: EvalTransform
    description: dict[str, Any]


def prepare(
    checkpoint: str,
    data: str | None,
    train_split: str | None,
    test_split: str | None,
    size: int | None,
    limit: int = 0,
    download: bool = False,
    seed: int = 0,
    ignore=(),
) -> tuple[LoadedModel, EvalData]:
    """Load the checkpoint and the labelled data; image size and normalisation default to the
    pretraining configuration when the checkpoint carries one (else 224 px, ImageNet stats)."""
    loaded = load_checkpoint(checkpoint, ignore=ignore, download=download)
    cfg = loaded.meta.get("config") or {}
    mc = cfg.get("multicrop", {})
    dcfg = cfg.get("data", {})
    data = data or dcfg.get("source")
    if not data:
        raise ValueError("no data given: pass --data (a labelled folder, archive or dataset)")
    train_split = train_split if train_split is not None else dcfg.get("split", "train")
    test_split = test_split if test_split is not None else dcfg.get("eval_split", "val")
    size = size or (mc.get("sizes") or [224])[0]
    mean = mc.get("mean", list(IMAGENET_MEAN))
    std = mc.get("std", list(IMAGENET_STD))
    root = dcfg.get("root", "~/.cache/swav/datasets")
    from swav.data.sources import limit_source

    train = limit_source(open_source(data, train_split, root, download, seed), limit, seed)
    test = limit_source(open_source(data, test_split, root, download, seed), limit, seed)
    for name, src in (("training", train), ("test", test)):
        if not src.labelled:
            raise ValueError(f"the {name} split of {data} has no labels (class folders)")
    tf = EvalTransform(size, mean, std, crop_fraction=1.0 if size <= 64 else 0.875)
    desc = {
        "data": data,
        "train_split": train_split,
        "test_split": test_split,
        "n_train": len(train),
        "n_test": len(test),
        "size": size,
        "classes": len(train.classes),
    }
    return loaded, EvalData(train, test, tf, desc)


def _features(
    loaded: LoadedModel,
    d: EvalData,
    cache_dir: str | None,
    batch_size: int,
    workers: int,
    progress: bool,
):
    key = None
    if cache_dir:
        src = Path(loaded.meta["source"])
        st = src.stat()
        key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    ftr = extract_features(
        loaded.model,
        d.train,
        d.transform,
        batch_size,
        workers,
        progress=progress,
        cache_dir=cache_dir,
        cache_key=key,
    ).valid()
    fte = extract_features(
        loaded.model,
        d.test,
        d.transform,
        batch_size,
        workers,
        progress=progress,
        cache_dir=cache_dir,
        cache_key=key,
    ).valid()
    return ftr, fte


def _finish(
    protocol: str,
    loaded: LoadedModel,
    d: EvalData,
    settings: dict,
    results: dict,
    seed: int,
    started: float,
    out: str | Path | None,
) -> dict[str, Any]:
    record = {
        "protocol": protocol,
        "checkpoint": loaded.meta["source"],
        "layout": loaded.layout,
        "arch": loaded.arch,
        **d.description,
        "settings": settings,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "results": results,
    }
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
    return record


def run_knn(
    checkpoint,
    ignore=(),
    data=None,
    train_split=None,
    test_split=None,
    size=None,
    ks=(10, 20, 100, 200),
    temperature=0.07,
    limit=0,
    seed=0,
    out=None,
    cache_dir=None,
    batch_size=256,
    workers=0,
    progress=False,
) -> dict[str, Any]:
    t = time.time()
    loaded, d = prepare(
        checkpoint, data, train_split, test_split, size, limit, seed=seed, ignore=ignore
    )
    ftr, fte = _features(loaded, d, cache_dir, batch_size, workers, progress)
    res = knn_accuracy(ftr.features, ftr.labels, fte.features, fte.labels, ks, temperature)
    return _finish(
        "knn",
        loaded,
        d,
        {"ks": list(ks), "temperature": temperature},
        {f"k={k}": v for k, v in res.items()},
        seed,
        t,
        out,
    )


def run_cluster(
    checkpoint,
    ignore=(),
    data=None,
    train_split=None,
    test_split=None,
    size=None,
    limit=0,
    seed=0,
    out=None,
    batch_size=256,
    workers=0,
    progress=False,
) -> dict[str, Any]:
    t = time.time()
    loaded, d = prepare(
        checkpoint, data, train_split, test_split, size, limit, seed=seed, ignore=ignore
    )
    if loaded.model.prototypes is None:
        raise ValueError("this checkpoint has no prototypes: clustering needs a SwAV model")
    f = extract_features(
        loaded.model, d.test, d.transform, batch_size, workers, progress=progress
    ).valid()
    res = cluster_metrics(f.labels.numpy(), f.scores.argmax(1).numpy(), f.scores.shape[1])
    return _finish(
        "cluster", loaded, d, {"assignment": "argmax prototype, first head"}, res, seed, t, out
    )


def run_linear(
    checkpoint,
    ignore=(),
    data=None,
    train_split=None,
    test_split=None,
    size=None,
    epochs=100,
    batch_size=256,
    lr=None,
    weight_decay=1e-6,
    fast=False,
    stages=False,
    val_fraction=0.0,
    limit=0,
    seed=0,
    out=None,
    cache_dir=None,
    workers=0,
    progress=False,
) -> dict[str, Any]:
    t = time.time()
    loaded, d = prepare(
        checkpoint, data, train_split, test_split, size, limit, seed=seed, ignore=ignore
    )
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr or 0.3 * batch_size / 256,
        "weight_decay": weight_decay,
        "mode": "fast" if fast else "augmented",
        "val_fraction": val_fraction,
    }
    if stages:
        tr = extract_stage_features(loaded.model, d.train, d.transform)
        te = extract_stage_features(loaded.model, d.test, d.transform)
        ytr, yte = torch.tensor(d.train.labels), torch.tensor(d.test.labels)
        names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        res = {
            n: linear_probe_features(
                a, ytr, b, yte, epochs, batch_size, lr, weight_decay, val_fraction, seed=seed
            ).as_dict()
            for n, a, b in zip(names, tr, te)
        }
        settings["mode"] = "per-stage (fast)"
    elif fast:
        ftr, fte = _features(loaded, d, cache_dir, batch_size, workers, progress)
        res = linear_probe_features(
            ftr.features,
            ftr.labels,
            fte.features,
            fte.labels,
            epochs,
            batch_size,
            lr,
            weight_decay,
            val_fraction,
            seed=seed,
        ).as_dict()
    else:
        res = linear_eval(
            loaded.model,
            d.train,
            d.test,
            d.transform.size,
            d.transform.mean.flatten().tolist(),
            d.transform.std.flatten().tolist(),
            epochs,
            batch_size,
            lr,
            weight_decay,
            d.transform.crop_fraction,
            workers=workers,
            seed=seed,
            progress=progress,
        ).as_dict()
    return _finish("linear", loaded, d, settings, res, seed, t, out)


def run_semisup(
    checkpoint,
    ignore=(),
    data=None,
    train_split=None,
    test_split=None,
    size=None,
    fraction=0.1,
    subset_file=None,
    epochs=20,
    batch_size=256,
    trunk_lr=None,
    head_lr=None,
    limit=0,
    seed=0,
    out=None,
) -> dict[str, Any]:
    t = time.time()
    loaded, d = prepare(
        checkpoint, data, train_split, test_split, size, limit, seed=seed, ignore=ignore
    )
    if subset_file:
        idx = subset_from_file(d.train.item_names(), subset_file)
    else:
        idx = balanced_subset(d.train.labels, fraction, seed)
    one_pct = fraction <= 0.01
    trunk_lr = trunk_lr if trunk_lr is not None else (0.02 if one_pct else 0.01)
    head_lr = head_lr if head_lr is not None else (5.0 if one_pct else 0.2)
    res = finetune(
        loaded.model,
        d.train,
        d.test,
        idx,
        d.transform.size,
        d.transform.mean.flatten().tolist(),
        d.transform.std.flatten().tolist(),
        epochs,
        batch_size,
        trunk_lr,
        head_lr,
        crop_fraction=d.transform.crop_fraction,
        seed=seed,
    ).as_dict()
    settings = {
        "fraction": fraction,
        "subset_file": subset_file,
        "labelled": len(idx),
        "epochs": epochs,
        "trunk_lr": trunk_lr,
        "head_lr": head_lr,
    }
    return _finish("semisup", loaded, d, settings, res, seed, t, out)


def run_lowshot(
    checkpoint,
    ignore=(),
    data=None,
    train_split=None,
    test_split=None,
    size=None,
    shots=DEFAULT_SHOTS,
    draws=5,
    limit=0,
    seed=0,
    out=None,
    cache_dir=None,
    batch_size=256,
    workers=0,
    progress=False,
) -> dict[str, Any]:
    t = time.time()
    loaded, d = prepare(
        checkpoint, data, train_split, test_split, size, limit, seed=seed, ignore=ignore
    )
    ftr, fte = _features(loaded, d, cache_dir, batch_size, workers, progress)
    res = lowshot_svm(
        ftr.features.numpy(),
        ftr.labels.numpy(),
        fte.features.numpy(),
        fte.labels.numpy(),
        shots,
        draws,
        seed=seed,
    )
    return _finish(
        "lowshot",
        loaded,
        d,
        {"shots": list(shots), "draws": draws},
        {f"k={k}": v for k, v in res.items()},
        seed,
        t,
        out,
    )


def format_result(record: dict[str, Any]) -> str:
    """A readable table of one result."""
    lines = [
        f"{record['protocol']} on {record['data']} ({record['test_split']}, "
        f"{record['n_test']} images) with {record['arch']} from {record['checkpoint']}"
    ]
    res = record["results"]

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    for k, v in res.items():
        if isinstance(v, dict):
            lines.append(
                f"  {k:>12}: "
                + "  ".join(f"{a}={fmt(b)}" for a, b in v.items() if not isinstance(b, list))
            )
        else:
            lines.append(f"  {k:>16}: {fmt(v)}")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Gather a run's results (eval/*.json, demo_results.json, the last epoch's metrics) into
    ``run_dir/REPORT.md``."""
    from swav.engine.metrics import read_metrics

    run_dir = Path(run_dir)
    parts = [f"# Report: {run_dir.name}", ""]
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        import yaml

        c = yaml.safe_load(cfg.read_text())
        parts += [
            "## Pretraining",
            "",
            f"- data: `{c['data']['source']}` (split `{c['data']['split']}`)",
            f"- model: {c['model']['arch']}, prototypes {c['model']['n_prototypes']}",
            f"- crops: {c['multicrop']['n_crops']} x {c['multicrop']['sizes']} px",
            f"- optimiser: {c['optim']['optimizer']} lr {c['optim']['base_lr']}, "
            f"batch {c['train']['batch_size']}, epochs {c['train']['epochs']}",
        ]
    epochs = [m for m in read_metrics(run_dir) if m.get("kind") == "epoch"]
    if epochs:
        e = epochs[-1]
        parts.append(
            f"- last epoch {e['epoch']}: loss {e['loss']:.4f}, prototypes used "
            f"{e['prototypes_used']}"
        )
    if (run_dir / "loss.png").exists():
        parts += ["", "![loss](loss.png)"]
    results = sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").exists() else []
    if results:
        parts += ["", "## Evaluation", ""]
        for r in results:
            rec = json.loads(r.read_text())
            parts += ["```", format_result(rec), "```", ""]
    demo = run_dir / "demo_results.json"
    if demo.exists():
        from swav.demo import format_report

        parts += ["## Demo", "", "```", format_report(json.loads(demo.read_text())), "```"]
    out = run_dir / "REPORT.md"
    out.write_text("\n".join(parts) + "\n")
    return out
