"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides, validated up front.

A configuration is built as: defaults -> preset (``configs/<name>.yaml`` inside the package, or a
YAML path) -> ``section.key=value`` overrides. Unknown keys and bad values are refused before any
data is read or any model is built, with the key and the allowed values in the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import swav.run_length as run_length
from swav.data.multicrop_config import MultiCropConfig
from swav.data.sources import DataConfig
from swav.errors import ConfigError
from swav.model.config import ModelConfig
from swav.objective.cluster_loss import ClusterConfig
from swav.objective.swav_loss import SwAVConfig

PRESET_DIR = Path(__file__).parent / "configs"
ON_COLLAPSE = ("warn", "stop", "recover")
"""The values of ``train.on_collapse``."""


@dataclass
class OptimConfig:
    optimizer: str = "lars"
    """lars (SGD + LARS, the reference), sgd, or adamw."""
    base_lr: float = 4.8
    """Peak learning rate (reached after warmup)."""
    final_lr: float = 0.0048
    """Learning rate at the end of the cosine schedule."""
    warmup_epochs: float | str = 10
    """Linear warmup length in epochs (0: none), or a percentage of the run's epochs ('5%')."""
    start_warmup: float = 0.3
    """Learning rate at the first warmup iteration."""
    scale_lr: bool = False
    """Linear scaling rule: multiply base_lr, final_lr and start_warmup by global batch / 256."""
    momentum: float = 0.9
    """Heavy-ball momentum (SGD and LARS)."""
    weight_decay: float = 1e-6
    """L2 weight decay (1e-6 in the reference recipes; AdamW uses it decoupled)."""
    lars_eta: float = 0.001
    """LARS trust coefficient (no clipping, as in the reference)."""
    lars_exclude_bias_norm: bool = False
    """Skip LARS adaptation and weight decay for biases and normalisation parameters (the
    reference applies LARS to every parameter)."""


@dataclass
class TrainConfig:
    epochs: int = 100
    """Training epochs (passes over the data); the schedule is laid out over all of them. With
    train.time_budget the run sets them itself."""
    time_budget: float | str = 0
    """Wall-clock time the run may take, '30m', '2h', '1h30m' or seconds (0: none, train.epochs
    is used). The run times its first steps and sets train.epochs, and every schedule given as
    a percentage, to end on time; it checks again at each epoch end, logs each plan, and keeps
    the plan and the time spent in the checkpoint, so a resumed run continues its budget."""
    batch_size: int = 64
    """Images per process (the global batch is batch_size x world size)."""
    precision: str = "auto"
    """auto (bf16 where supported, else fp32), bf16, fp16 (CUDA only, with a gradient scaler) or
    fp32. Sinkhorn and the loss always run in fp32."""
    channels_last: bool = True
    """NHWC memory format for the backbone (faster convolutions on CPU and tensor cores)."""
    compile: bool = False
    """torch.compile the model (compiling takes minutes, over 15 on a 2-core CPU for
    ResNet-18; measure before turning it on)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    threads: int = 0
    """Intra-op threads of each training process (0: the cores it may use, after the loader
    workers' share; printed at start). More threads than cores slow a step many times."""
    seed: int = 0
    """Seeds the initialisation, the data order and every crop."""
    deterministic: bool = False
    """Deterministic kernels (bitwise-reproducible runs and resumes on CPU; slower)."""
    sync_bn: bool = True
    """BatchNorm statistics over all processes in distributed training (SyncBatchNorm on CUDA,
    the same computation with plain collectives elsewhere), so that N processes x B images
    train like one process with N x B."""
    sync_bn_group: int = 0
    """Processes per BatchNorm group (consecutive ranks; 0: all), as the reference's
    syncbn_process_group_size: statistics over fewer GPUs cost less communication."""
    iters_per_epoch: int = 0
    """Cap on iterations per epoch (0: the whole dataset); handy for quick trials."""
    log_every: int = 10
    """Iterations between log lines and host syncs (loss, entropy, prototypes in use)."""
    save_every: int = 0
    """Keep a copy of the checkpoint every N epochs in checkpoints/ (0: only the latest)."""
    global_batch: int = 0
    """The global batch (batch_size x processes) the learning rate is set for; presets state
    it. A run whose global batch differs scales optim.base_lr / final_lr / start_warmup by
    actual / global_batch (the linear rule) and says so; 0: use the learning rate as given."""
    save_every_iters: int = 0
    """Also write checkpoint.pt every N iterations within an epoch (0: at epoch ends only), so
    that a kill without warning loses at most N steps; long epochs on many GPUs want this."""
    collapse_patience: int | str = 200
    """Iterations (or a percentage of the run's, '3%') that the collapse signals (uniform codes,
    embeddings collapsed to one point, loss at ln K) must last, after the prototypes are
    unfrozen, before the run counts as collapsed."""
    on_collapse: str = "recover"
    """What a collapsed run does: 'warn' (log the evidence and what to change, go on), 'stop'
    (raise CollapseError; checkpoint_healthy.pt holds the last healthy state) or 'recover'
    (rewind to the last healthy checkpoint and change what the evidence points to: learning
    rate, epsilon, queue start, prototype freezing; each change is logged)."""
    max_recoveries: int = 3
    """Recoveries allowed before a run that keeps collapsing stops with CollapseError."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    multicrop: MultiCropConfig = field(default_factory=MultiCropConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run_dir: str = "runs/swav"
    method: str = "swav"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that define a run (not of run-length or logistics settings)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """The settings that define a run, by section: what a resumed run may not change
        without ``--allow-config-change`` (run length and logistics left out)."""
        d = self.to_dict()
        logistics = (
            "epochs",
            "time_budget",
            "log_every",
            "save_every",
            "save_every_iters",
            "device",
            "threads",
            "iters_per_epoch",
        )
        for key in (*logistics, "on_collapse", "max_recoveries"):
            d["train"].pop(key)
        for key in ("workers", "transfer", "root", "download", "eval_split"):
            d["data"].pop(key)
        d["multicrop"].pop("eval_size")  # how whole images are evaluated, not how it trains
        d.pop("run_dir")
        if d["method"] == "swav":  # runs from before the clustering methods keep their identity
            d.pop("method")
            d.pop("cluster")
        for (section, key), default in ADDED_SETTINGS.items():
            if d[section].get(key) == default:  # likewise for settings added later
                d[section].pop(key)
        return d


def identity_changes(before: Config, after: Config) -> list[str]:
    """``key: old -> new`` for each setting of the run's identity that differs."""
    old, new = before.identity(), after.identity()
    changes = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                changes.append(f"{section}: {a} -> {b}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append(f"{section}.{key}: {a.get(key)} -> {b.get(key)}")
    return changes


ADDED_SETTINGS: dict[tuple[str, str], Any] = {
    ("model", "init"): "",
    ("train", "global_batch"): 0,
    ("train", "sync_bn_group"): 0,
    ("data", "samples_per_epoch"): 0,
    ("data", "shuffle_buffer"): 1000,
}
"""Settings added after the run format: at their default they leave a run's fingerprint as it
was, so older run directories still resume."""

SECTIONS = {f.name: f for f in dataclasses.fields(Config)}
TOP_LEVEL = ("run_dir", "method")
"""Settings that are not in a section."""


def presets() -> list[str]:
    """The names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_summary(name: str) -> str:
    """The first comment line of a bundled preset (what it reproduces); the preset is parsed."""
    load_preset(name)
    lines = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
    return lines[0].lstrip("# ") if lines and lines[0].startswith("#") else ""


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot use {value!r} as {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError as e:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from e
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from e
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts[0] in TOP_LEVEL and len(parts) == 1:
        setattr(cfg, parts[0], _coerce(value, str, dotted))
        return
    if len(parts) != 2 or parts[0] not in SECTIONS or parts[0] in TOP_LEVEL:
        raise ConfigError(
            f"unknown configuration key {dotted!r}; keys look like section.key with section in "
            f"{', '.join(s for s in SECTIONS if s not in TOP_LEVEL)} (or run_dir, method)"
        )
    section = getattr(cfg, parts[0])
    types_ = _field_types(section)
    if parts[1] not in types_:
        raise ConfigError(
            f"unknown configuration key {dotted!r}; {parts[0]} has: {', '.join(types_)}"
        )
    setattr(section, parts[1], _coerce(value, types_[parts[1]], dotted))


def _apply_mapping(cfg: Config, mapping: dict[str, Any], origin: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(mapping).__name__}")
    for key, value in mapping.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
        else:
            _set(cfg, key, value)


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no preset {name_or_path!r}: choose one of {', '.join(presets())} or a YAML file path"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise ConfigError(f"preset {path}: not valid YAML{where} ({problem}); fix the file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path}: cannot be read ({e})") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"preset {path}: expected sections of settings (e.g. 'train:' then 'epochs: 10'), "
            f"found a {type(loaded).__name__}"
        )
    return loaded


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(
    preset: str | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Defaults, then a preset (a name, a YAML file, or its mapping), then overrides;
    validated (see ``validate``)."""
    cfg = Config()
    if isinstance(preset, dict):
        _apply_mapping(cfg, preset, "the run's settings")
    elif preset:
        _apply_mapping(cfg, load_preset(preset), f"preset {preset}")
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            _set(cfg, k, v)
    else:
        for text in overrides or []:
            _set(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_mapping(cfg, d, "configuration")
    return cfg


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
    out = config_from_dict(cfg.to_dict())
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
    from swav.data.stream import is_stream

    d = cfg.data
    _check(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {d.shuffle_buffer}")
    if not is_stream(d.source):
        return
    need = cfg.train.batch_size * world_size
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
    _check_settings(cfg, world_size)
    _VALIDATED[id(cfg)] = seen


def check_dataset_size(cfg: Config, world_size: int, dataset_size: int) -> None:
    """Refuse a global batch larger than the data."""
    global_batch = cfg.train.batch_size * world_size
    _check(
        dataset_size >= global_batch,
        "train.batch_size",
        f"the global batch ({global_batch}) is larger than the dataset ({dataset_size} "
        f"images); use at most {dataset_size // world_size} per process",
    )


def _check_settings(cfg: Config, world_size: int) -> None:
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
    global_batch = t.batch_size * world_size
    if s.queue_length:
        _check(
            s.queue_length > 0 and s.queue_length % global_batch == 0,
            "swav.queue_length",
            f"must be a positive multiple of the global batch size {global_batch} "
            f"(e.g. {global_batch * max(1, round(s.queue_length / global_batch))}), "
            f"got {s.queue_length}",
        )


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (its ``--help`` text)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError, SyntaxError):
        return docs
    node = tree.body[0]
    body = node.body if isinstance(node, ast.ClassDef) else []
    for a, b in zip(body, body[1:]):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def describe_options() -> list[tuple[str, str, str]]:
    """(key, default, help) for every option, from the dataclass fields and their docstrings."""
    rows = []
    for section, f in SECTIONS.items():
        if section == "run_dir":
            rows.append(("run_dir", "runs/swav", "Run directory: config, checkpoints, metrics."))
            continue
        if section == "method":
            rows.append(
                (
                    "method",
                    "'swav'",
                    "The objective: swav (online Sinkhorn codes, swapped prediction), "
                    "deepclusterv2 (k-means of a memory bank, frozen centroids) or selav2 "
                    "(Sinkhorn pseudo-labels over a memory bank, once per epoch).",
                )
            )
            continue
        cls: Any = f.default_factory
        docs = _field_docs(cls)
        inst = cls()
        for sub in dataclasses.fields(inst):
            rows.append(
                (f"{section}.{sub.name}", repr(getattr(inst, sub.name)), docs.get(sub.name, ""))
            )
    return rows
