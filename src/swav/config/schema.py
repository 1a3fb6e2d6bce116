"""The configuration's schema: one dataclass per section (the field docstrings are the help
text), the run's identity (what a resumed run may not change), and the names of the sections."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swav.data.multicrop_config import MultiCropConfig
from swav.data.settings import DataConfig
from swav.model.settings import ModelConfig
from swav.objective.settings import ClusterConfig, SwAVConfig

PRESET_DIR = Path(__file__).parents[1] / "configs"
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
    keep_freed_memory: bool = True
    """On the CPU (glibc), keep the memory a step frees for the next step instead of returning
    it to the kernel, which faults in and zeroes it again page by page (for ResNet-50 close to
    half of a 2-core step). Given back when training ends; false: glibc's defaults."""
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
    loggers: list[str] = field(default_factory=list)
    """Experiment trackers besides metrics.jsonl (always written): any of tensorboard, wandb,
    mlflow, e.g. [tensorboard,wandb]. Each gets the configuration, every metric and the results
    of `swav eval` on the run; a resumed run continues the same tracker runs. W&B follows
    WANDB_PROJECT / WANDB_MODE=offline, MLflow MLFLOW_TRACKING_URI (default RUN_DIR/mlruns)."""

    def global_batch_of(self, world_size: int) -> int:
        """Images in one step over all ``world_size`` processes (the one place it is computed)."""
        return self.batch_size * world_size


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
            "keep_freed_memory",
            "iters_per_epoch",
            "loggers",
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
