"""The evaluation protocols, in a registry: each takes an ``EvalRequest`` and its own settings,
and gives a JSON-able record with the checkpoint, data, settings, seed and results (written to
``request.out`` when set). ``swav eval <protocol>`` is built from this registry."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swav.errors import UsageError
from swav.values import (
    DEFAULT_SHOTS,
    EPOCHS,
    LEARNING_RATE,
    InputFile,
    Range,
    non_negative,
    positive,
    whole,
)

if TYPE_CHECKING:
    from swav.eval.request import EvalRequest

# The protocols' machinery (torch, scikit-learn) is imported in the functions that run them,
# so that the registry (and `swav eval --help`) loads without it.

log = logging.getLogger(__name__)


def _opt(default: Any, help: str, kind: Any = None) -> Any:
    """A protocol setting: its default, its help text (the CLI's option) and its kind (a
    ``Range``, or the kind of file it names), which ``check_settings`` holds it to."""
    meta = {"help": help, "kind": kind}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class KnnSettings:
    k: list[int] = _opt([10, 20, 100, 200], "neighbours", whole(1, 100_000))
    temperature: float = _opt(0.07, "vote temperature: votes weigh exp(cosine / T)", positive(100))


@dataclass
class LinearSettings:
    epochs: int = _opt(100, "epochs", EPOCHS)
    lr: float | None = _opt(None, "learning rate (default: 0.3 x batch / 256)", LEARNING_RATE)
    weight_decay: float = _opt(1e-6, "weight decay", non_negative(1))
    fast: bool = _opt(False, "train on cached features without augmentation")
    stages: bool = _opt(False, "per-stage probes: stem and stages 1-4 (fast mode)")
    val_fraction: float = _opt(
        0.0,
        "validation split carved from the training set",
        Range(0, 1, hi_open=True, note="0 = none"),
    )


@dataclass
class SemisupSettings:
    fraction: float = _opt(0.1, "labelled fraction", Range(0, 1, lo_open=True))
    subset_file: str | None = _opt(
        None,
        "file listing the labelled images (default: a class-balanced draw)",
        InputFile("subset file"),
    )
    epochs: int = _opt(20, "epochs", EPOCHS)
    trunk_lr: float | None = _opt(
        None,
        "trunk learning rate (default: 0.02 for 1 percent of the labels, else 0.01)",
        non_negative(1e3, note="0 = the trunk frozen"),
    )
    head_lr: float | None = _opt(
        None,
        "head learning rate (default: 5.0 for 1 percent of the labels, else 0.2)",
        LEARNING_RATE,
    )


@dataclass
class LowshotSettings:
    shots: list[int] = _opt(list(DEFAULT_SHOTS), "examples per class", whole(1, 100_000))
    draws: int = _opt(5, "random draws per k", whole(1, 1000))


@dataclass
class ClusterSettings:
    """Prototype clustering has no settings: each image goes to its argmax prototype."""


Outcome = tuple[dict[str, Any], dict[str, Any]]
"""(settings as recorded, results)."""


def _knn(req: EvalRequest, s: KnnSettings) -> Outcome:
    from swav.eval.knn import knn_accuracy

    if not s.k or min(s.k) < 1:
        raise UsageError(f"knn: every k must be at least 1, got {s.k}")
    n = len(req.train)
    if max(s.k) > n and s.k == KnnSettings().k:  # the defaults, on a small training split
        kept = [k for k in s.k if k <= n] or [n]
        log.warning("knn: %d training images: k = %s (the defaults above %d left out)", n, kept, n)
        s = dataclasses.replace(s, k=kept)
    if max(s.k) > n:
        raise UsageError(
            f"knn: k={max(s.k)} is more than the {len(req.train)} training images; "
            "use a smaller --k or more data"
        )
    ftr, fte = req.features(req.train), req.features(req.test)
    res = knn_accuracy(ftr.features, ftr.labels, fte.features, fte.labels, s.k, s.temperature)
    return {"ks": list(s.k), "temperature": s.temperature}, {f"k={k}": v for k, v in res.items()}


def _linear(req: EvalRequest, s: LinearSettings) -> Outcome:
    import torch

    from swav.eval.linear import linear_eval, linear_probe_features
    from swav.model.features import extract_stage_features

    bs = req.batch_size
    settings = {
        "epochs": s.epochs,
        "batch_size": bs,
        "lr": s.lr or 0.3 * bs / 256,
        "weight_decay": s.weight_decay,
        "mode": "per-stage (fast)" if s.stages else "fast" if s.fast else "augmented",
        "val_fraction": s.val_fraction,
    }
    probe: Callable[..., Any] = linear_probe_features
    args = (s.epochs, bs, s.lr, s.weight_decay, s.val_fraction)
    if s.stages:
        model, tf = req.loaded.model, req.transform
        tr = extract_stage_features(model, req.train, tf)
        te = extract_stage_features(model, req.test, tf)
        ytr, yte = torch.tensor(req.train.labels), torch.tensor(req.test.labels)
        names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        res = {
            n: probe(a, ytr, b, yte, *args, seed=req.seed).as_dict()
            for n, a, b in zip(names, tr, te)
        }
    elif s.fast:
        ftr, fte = req.features(req.train), req.features(req.test)
        res = probe(ftr.features, ftr.labels, fte.features, fte.labels, *args, seed=req.seed)
        res = res.as_dict()
    else:
        res = linear_eval(
            req.loaded.model,
            req.train,
            req.test,
            req.transform,
            epochs=s.epochs,
            batch_size=bs,
            lr=s.lr,
            weight_decay=s.weight_decay,
            workers=req.workers,
            seed=req.seed,
            progress=req.progress,
        ).as_dict()
    return settings, res


def _semisup(req: EvalRequest, s: SemisupSettings) -> Outcome:
    from swav.eval.semisup import balanced_subset, finetune, subset_from_file

    if s.subset_file:
        idx = subset_from_file(req.train.item_names(), s.subset_file)
    else:
        idx = balanced_subset(req.train.labels, s.fraction, req.seed)
    one_pct = s.fraction <= 0.01
    trunk_lr = s.trunk_lr if s.trunk_lr is not None else (0.02 if one_pct else 0.01)
    head_lr = s.head_lr if s.head_lr is not None else (5.0 if one_pct else 0.2)
    res = finetune(
        req.loaded.model,
        req.train,
        req.test,
        idx,
        req.transform,
        epochs=s.epochs,
        batch_size=req.batch_size,
        trunk_lr=trunk_lr,
        head_lr=head_lr,
        seed=req.seed,
        progress=req.progress,
    ).as_dict()
    settings = {
        "fraction": s.fraction,
        "subset_file": s.subset_file,
        "labelled": len(idx),
        "epochs": s.epochs,
        "trunk_lr": trunk_lr,
        "head_lr": head_lr,
    }
    return settings, res


def _lowshot(req: EvalRequest, s: LowshotSettings) -> Outcome:
    from swav.eval.lowshot import lowshot_svm

    ftr, fte = req.features(req.train), req.features(req.test)
    res = lowshot_svm(
        ftr.features.numpy(),
        ftr.labels.numpy(),
        fte.features.numpy(),
        fte.labels.numpy(),
        s.shots,
        s.draws,
        seed=req.seed,
    )
    return {"shots": list(s.shots), "draws": s.draws}, {f"k={k}": v for k, v in res.items()}


def _cluster(req: EvalRequest, s: ClusterSettings) -> Outcome:
    from swav.eval.clustering import cluster_metrics
    from swav.interop.checkpoints import CheckpointError

    if req.loaded.model.prototypes is None:
        raise CheckpointError("this checkpoint has no prototypes: clustering needs a SwAV model")
    f = req.features(req.test)
    assert f.scores is not None
    res = cluster_metrics(f.labels.numpy(), f.scores.argmax(1).numpy(), f.scores.shape[1])
    return {"assignment": "argmax prototype, first head"}, res


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: its name, a one-line description, its settings and its run."""

    name: str
    help: str
    settings: type
    run: Callable[[EvalRequest, Any], Outcome]


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("knn", "weighted cosine kNN on frozen features", KnnSettings, _knn),
        Protocol("linear", "linear probe on the frozen backbone", LinearSettings, _linear),
        Protocol(
            "semisup",
            "fine-tune on a small labelled subset (1 or 10 percent)",
            SemisupSettings,
            _semisup,
        ),
        Protocol(
            "lowshot", "low-shot linear SVMs, k = 1 ... 96 per class", LowshotSettings, _lowshot
        ),
        Protocol(
            "cluster",
            "prototype clustering: NMI, ARI, Hungarian accuracy",
            ClusterSettings,
            _cluster,
        ),
    )
}


def evaluate(request: EvalRequest, protocol: str, settings: Any = None) -> dict[str, Any]:
    from swav.engine.checkpoint import atomic_write

    """Run one protocol on a resolved request; the result record (written to ``request.out``
    when set)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[protocol]
    settings = settings if settings is not None else p.settings()
    check_settings(settings, protocol)
    recorded, results = p.run(request, settings)
    record = {
        "protocol": protocol,
        **request.description(),
        "settings": recorded,
        "seed": request.seed,
        "seconds": round(time.time() - request.started, 1),
        "results": results,
    }
    record = _finite(record)
    if request.out:
        text = json.dumps(record, indent=2, allow_nan=False).encode()
        atomic_write(request.out, lambda f: f.write(text))
    return record


def check_settings(settings: Any, protocol: str) -> None:
    """Every setting within its declared kind (``UsageError`` naming the first that is not):
    the library refuses what the command line refuses."""
    for f in dataclasses.fields(settings):
        kind, value = f.metadata.get("kind"), getattr(settings, f.name)
        if value is None or kind is None:
            continue
        name = f"{protocol} {f.name}"
        if isinstance(kind, Range):
            for v in value if isinstance(value, list) else [value]:
                kind.check(v, name)
            if isinstance(value, list) and not value:
                raise UsageError(f"{name}: give at least one value")
        elif isinstance(kind, InputFile) and not Path(value).expanduser().is_file():
            raise UsageError(f"{name}: {value}: no such file")


def _finite(value: Any) -> Any:
    """NaN and infinities (a figure a protocol does not compute) become None: valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run_protocol(protocol: str, checkpoint: str, **options: Any) -> dict[str, Any]:
    from swav.eval.request import resolve_request

    """Resolve the request and run one protocol. ``options`` mixes the request's arguments
    (``resolve_request``: data, splits, size, limit, seed, out, cache_dir, ...) and the
    protocol's settings (e.g. ``k`` for knn, ``epochs`` and ``fast`` for linear)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS[protocol].settings
    own = {f.name for f in dataclasses.fields(cls)}
    request_args = set(inspect.signature(resolve_request).parameters)
    unknown = set(options) - own - request_args
    if unknown:
        raise UsageError(
            f"{protocol}: unknown options {sorted(unknown)}; settings: {sorted(own)}, "
            f"request: {sorted(request_args - {'checkpoint'})}"
        )
    settings = cls(**{k: v for k, v in options.items() if k in own})
    request = resolve_request(checkpoint, **{k: v for k, v in options.items() if k not in own})
    return evaluate(request, protocol, settings)


def run_knn(checkpoint: str, **options: Any) -> dict[str, Any]:
    """kNN protocol (``run_protocol("knn", ...)``)."""
    return run_protocol("knn", checkpoint, **options)


def run_linear(checkpoint: str, **options: Any) -> dict[str, Any]:
    """Linear probe (``run_protocol("linear", ...)``)."""
    return run_protocol("linear", checkpoint, **options)


def run_semisup(checkpoint: str, **options: Any) -> dict[str, Any]:
    """Semi-supervised fine-tuning (``run_protocol("semisup", ...)``)."""
    return run_protocol("semisup", checkpoint, **options)


def run_lowshot(checkpoint: str, **options: Any) -> dict[str, Any]:
    """Low-shot SVMs (``run_protocol("lowshot", ...)``)."""
    return run_protocol("lowshot", checkpoint, **options)


def run_cluster(checkpoint: str, **options: Any) -> dict[str, Any]:
    """Prototype clustering (``run_protocol("cluster", ...)``)."""
    return run_protocol("cluster", checkpoint, **options)


def format_result(record: dict[str, Any]) -> str:
    """A readable table of one result."""
    lines = [
        f"{record['protocol']} on {record['data']} ({record['test_split']}, "
        f"{record['n_test']} images) with {record['arch']} from {record['checkpoint']}"
    ]

    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v)

    for k, v in record["results"].items():
        if isinstance(v, dict):
            cells = "  ".join(f"{a}={fmt(b)}" for a, b in v.items() if not isinstance(b, list))
            lines.append(f"  {k:>12}: {cells}")
        else:
            lines.append(f"  {k:>16}: {fmt(v)}")
    return "\n".join(lines)
