"""The checks a configuration passes before anything is built (``validate``), and the run-length
settings resolved for a run's length (``resolve_run_length``)."""

from __future__ import annotations

import copy
import math
from typing import Any

import swav.run_length as run_length
from swav.config.schema import ON_COLLAPSE, Config
from swav.data.settings import is_stream
from swav.errors import ConfigError
from swav.values import LOGGERS


def _check_run_length(value: float | str, key: str) -> None:
    """A number >= 0, or a percentage of the run between 0 and 100."""
    try:
        p = run_length.percentage(value)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from e
    if p is None:
        _check(float(value) >= 0, key, f"must be >= 0 or a percentage like '5%', got {value}")
    else:
        _check(p <= 100, key, f"a percentage of the run must be at most 100%, got {value}")


def resolve_run_length(cfg: Config, iters_per_epoch: int) -> tuple[Config, list[str]]:
    """A copy of ``cfg`` whose schedule settings are absolute for this run (percentages
    resolved against ``train.epochs`` and ``iters_per_epoch``), and one line per setting that
    was resolved or that the run does not reach, for the log."""
    out = copy.deepcopy(cfg)  # a new configuration; the one given is never changed
    epochs, total = cfg.train.epochs, cfg.train.epochs * iters_per_epoch
    notes = []
    s, o = out.swav, out.optim
    warm = run_length.resolve(o.warmup_epochs, epochs)
    queue = int(round(run_length.resolve(s.epoch_queue_starts, epochs)))
    freeze = int(round(run_length.resolve(s.freeze_prototypes_niters, total)))
    t = out.train
    t.collapse_patience = max(1, int(round(run_length.resolve(t.collapse_patience, total))))
    for key, given, value, unit, limit in (
        ("optim.warmup_epochs", o.warmup_epochs, warm, "epochs", epochs),
        ("swav.epoch_queue_starts", s.epoch_queue_starts, queue, "epochs", epochs),
        ("swav.freeze_prototypes_niters", s.freeze_prototypes_niters, freeze, "iterations", total),
    ):
        if isinstance(given, str):
            notes.append(f"{key} = {given} of {limit} {unit}: {value:g}")
        if (
            value >= limit
            and value > 0
            and not (key == "swav.epoch_queue_starts" and not s.queue_length)
        ):
            notes.append(
                f"{key} = {given} reaches past the end of this run ({limit} {unit}); give it as "
                "a percentage of the run (e.g. '5%') to keep its intent when the run is shorter"
            )
    o.warmup_epochs, s.epoch_queue_starts, s.freeze_prototypes_niters = warm, queue, freeze
    return out, notes


def _check_data(cfg: Config, world_size: int) -> None:
    """The data section: loader workers, how crops travel, streaming."""
    _check(
        cfg.data.workers >= -1,
        "data.workers",
        f"must be >= 0, or -1 (sized to the cores), got {cfg.data.workers}",
    )
    _check(
        cfg.data.transfer in ("uint8", "float"),
        "data.transfer",
        f"must be 'uint8' or 'float', got {cfg.data.transfer!r}",
    )
    _check_stream(cfg, world_size)


def _check_stream(cfg: Config, world_size: int) -> None:
    """A streaming source needs its epoch length (whether the method can train from one is
    the method's own rule: ``swav.engine.method``)."""
    d = cfg.data
    _check(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {d.shuffle_buffer}")
    if not is_stream(d.source):
        return
    need = cfg.train.global_batch_of(world_size)
    _check(
        d.samples_per_epoch >= need,
        "data.samples_per_epoch",
        f"a streaming source ({d.source[:60]}) is never listed: give the samples in an epoch, "
        f"at least one global batch ({need}); got {d.samples_per_epoch}",
    )
    _check(
        not cfg.multicrop.on_device,
        "multicrop.on_device",
        "is not available with a streaming source: its loader workers make the crops",
    )


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


_VALIDATED: dict[int, tuple[int, dict[str, Any]]] = {}
"""The settings each configuration (by id) was last validated with, and the world size."""


def validate(cfg: Config, world_size: int = 1) -> None:
    """Refuse settings that cannot train, naming the key and what is allowed. A configuration
    validated before with the same settings and world size is not checked again."""
    seen = (world_size, cfg.to_dict())
    if _VALIDATED.get(id(cfg)) == seen:
        return
    check_settings(cfg, world_size)
    if len(_VALIDATED) >= 64:  # the most recent configurations are the ones validated again
        _VALIDATED.pop(next(iter(_VALIDATED)))
    _VALIDATED[id(cfg)] = seen


def check_dataset_size(cfg: Config, world_size: int, dataset_size: int) -> None:
    """Refuse a global batch larger than the data."""
    global_batch = cfg.train.global_batch_of(world_size)
    _check(
        dataset_size >= global_batch,
        "train.batch_size",
        f"the global batch ({global_batch}) is larger than the dataset ({dataset_size} "
        f"images); use at most {dataset_size // world_size} per process",
    )


CROSS_FIELD = (
    "swav.queue_length",
    "swav.crops_for_assign",
    "data.samples_per_epoch",
    "multicrop.n_crops",
    "multicrop.sizes",
    "multicrop.min_scale",
    "multicrop.max_scale",
)
"""Settings whose check depends on others (the batch, the crops, the world size)."""


def check_loggers(names: Any) -> None:
    """``train.loggers``: known trackers, each installed (found without importing it), none
    twice."""
    import importlib.util

    _check(
        isinstance(names, list) and all(isinstance(n, str) for n in names),
        "train.loggers",
        f"must be a list of names such as [tensorboard,wandb], got {names!r}",
    )
    for name in names:
        if name == "jsonl":
            continue  # always written; naming it is harmless
        _check(
            name in LOGGERS,
            "train.loggers",
            f"unknown logger {name!r}; choose from {', '.join(LOGGERS)} (metrics.jsonl is "
            "always written)",
        )
        _check(
            importlib.util.find_spec(LOGGERS[name]) is not None,
            "train.loggers",
            f"{name} is not installed: pip install 'swav[{name}]', or leave it out",
        )
    _check(len(set(names)) == len(names), "train.loggers", f"{names} names a logger twice")


def check_settings(cfg: Config, world_size: int = 1) -> None:
    """Every check of ``validate``, run whatever was validated before."""
    o, t, s, m = cfg.optim, cfg.train, cfg.swav, cfg.model
    for key in ("base_lr", "final_lr", "start_warmup"):
        v = getattr(o, key)
        _check(math.isfinite(v) and v >= 0, f"optim.{key}", f"must be >= 0, got {v}")
    _check(o.base_lr > 0, "optim.base_lr", f"must be > 0, got {o.base_lr}")
    _check(
        o.optimizer in ("lars", "sgd", "adamw"),
        "optim.optimizer",
        f"must be one of lars, sgd, adamw; got {o.optimizer!r}",
    )
    _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check_run_length(o.warmup_epochs, "optim.warmup_epochs")
    _check(o.lars_eta > 0, "optim.lars_eta", f"must be > 0, got {o.lars_eta}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    try:
        run_length.duration(t.time_budget)
    except ConfigError as e:
        raise ConfigError(f"train.time_budget: {e}") from None
    _check(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
    _check(
        t.precision in ("auto", "bf16", "fp16", "fp32"),
        "train.precision",
        f"must be one of auto, bf16, fp16, fp32; got {t.precision!r}",
    )
    _check(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    check_loggers(t.loggers)
    _check(t.iters_per_epoch >= 0, "train.iters_per_epoch", "must be >= 0")
    _check(t.save_every >= 0, "train.save_every", "must be >= 0")
    _check(t.global_batch >= 0, "train.global_batch", "must be >= 0 (0: not stated)")
    _check(t.save_every_iters >= 0, "train.save_every_iters", "must be >= 0 (0: epoch ends only)")
    _check_run_length(t.collapse_patience, "train.collapse_patience")
    _check(
        t.on_collapse in ON_COLLAPSE,
        "train.on_collapse",
        f"must be one of {', '.join(ON_COLLAPSE)}; got {t.on_collapse!r}",
    )
    _check(t.max_recoveries >= 0, "train.max_recoveries", "must be >= 0")
    _check_data(cfg, world_size)
    _check(cfg.train.threads >= 0, "train.threads", f"must be >= 0, got {cfg.train.threads}")
    _check(cfg.data.limit >= 0, "data.limit", f"must be >= 0, got {cfg.data.limit}")
    _check(
        bool(m.n_prototypes) and all(k >= 1 for k in m.n_prototypes),
        "model.n_prototypes",
        f"must be a list of positive integers, got {m.n_prototypes}",
    )
    _check(m.hidden_mlp >= 0 and m.output_dim >= 0, "model.hidden_mlp/output_dim", "must be >= 0")
    _check(s.epsilon > 0, "swav.epsilon", f"must be > 0, got {s.epsilon}")
    _check(s.temperature > 0, "swav.temperature", f"must be > 0, got {s.temperature}")
    _check(s.sinkhorn_iterations >= 1, "swav.sinkhorn_iterations", "must be >= 1")
    _check_run_length(s.freeze_prototypes_niters, "swav.freeze_prototypes_niters")
    _check_run_length(s.epoch_queue_starts, "swav.epoch_queue_starts")
    cfg.multicrop.validate()
    n_crops = cfg.multicrop.total_crops
    _check(n_crops >= 2, "multicrop.n_crops", f"need at least 2 crops in all, got {n_crops}")
    _check(
        bool(s.crops_for_assign)
        and all(0 <= i < n_crops for i in s.crops_for_assign)
        and len(set(s.crops_for_assign)) == len(s.crops_for_assign),
        "swav.crops_for_assign",
        f"must be distinct crop indices in 0..{n_crops - 1}, got {s.crops_for_assign}",
    )
    global_batch = t.global_batch_of(world_size)
    if s.queue_length:
        _check(
            s.queue_length > 0 and s.queue_length % global_batch == 0,
            "swav.queue_length",
            f"must be a positive multiple of the global batch size {global_batch} "
            f"(e.g. {global_batch * max(1, round(s.queue_length / global_batch))}), "
            f"got {s.queue_length}",
        )
