"""Everything a run needs to continue exactly where it stopped, saved and restored by one object.

The checkpoint (format ``swav-run/1``) holds the model, the optimiser, the gradient scaler, the
method's own state (SwAV's feature queue, a clustering method's memory bank: every rank's, in
distributed runs), the position (epoch and next batch), the random states, the configuration
and its fingerprint, the names of the images skipped so far, and the settings changed by
recoveries from collapse. The sampler and every crop are seeded
from (seed, epoch, index), so nothing else is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from swav.config import Config, config_from_dict, identity_changes
from swav.engine.checkpoint import atomic_save, safe_load
from swav.engine.distributed import DistInfo
from swav.engine.method import Method
from swav.engine.recovery import Adjustments
from swav.engine.run_dir import CHECKPOINT_FORMAT, RunDir, is_run_checkpoint
from swav.engine.runtime import rng_state, set_rng_state
from swav.errors import SwAVError
from swav.model.swav import SwAV
from swav.objective.swav_loss import Objective

log = logging.getLogger(__name__)


class ConfigMismatchError(SwAVError, RuntimeError):
    """The run directory holds a checkpoint of a different configuration."""


def saved_state(run: RunDir, cfg: Config, allow_config_change: bool) -> dict[str, Any] | None:
    """The run directory's checkpoint, or None; refuses one written with other settings."""
    if not run.checkpoint.exists():
        return None
    state = safe_load(run.checkpoint)
    if not is_run_checkpoint(state):
        raise ConfigMismatchError(
            f"{run.checkpoint} is not a training checkpoint written by `swav pretrain` (no "
            "training state, only weights?): training cannot resume from it; choose another "
            "run_dir, or move the file away"
        )
    if state.get("fingerprint") == cfg.fingerprint():
        return state
    changes = _changes(state, cfg)
    shape = [c for c in changes if c.split(":")[0] in NETWORK_SHAPE]
    if shape:
        raise ConfigMismatchError(
            f"{run.path} holds a run with another network ({', '.join(shape)}): settings that "
            "change the network's shape cannot change on resume, even with "
            "--allow-config-change; choose another run_dir, or leave them as they were"
        )
    if not allow_config_change:
        listed = f" ({', '.join(changes[:6])}{', ...' if len(changes) > 6 else ''})"
        raise ConfigMismatchError(
            f"{run.path} holds a checkpoint of a different configuration"
            f"{listed if changes else ''}: choose another run_dir, leave these settings as "
            "they were, or pass --allow-config-change (allow_config_change=True) to resume "
            "with the new settings"
        )
    return state


NETWORK_SHAPE = (
    "model.arch",
    "model.hidden_mlp",
    "model.output_dim",
    "model.n_prototypes",
    "model.small_stem",
)
"""Settings that change the network's parameters: a checkpoint of other values cannot load."""


def _changes(state: dict[str, Any], cfg: Config) -> list[str]:
    """The identity settings of ``cfg`` that differ from the checkpoint's (empty when the
    checkpoint's configuration cannot be read)."""
    try:
        return identity_changes(config_from_dict(state.get("config") or {}), cfg)
    except SwAVError:
        return []


def settings_of_run(run: RunDir) -> dict[str, Any] | None:
    """The settings a run directory was trained with: its ``config.yaml``, else (when that
    file was lost) the configuration its checkpoint carries; None for a new directory."""
    saved = run.read_config()
    if saved is not None:
        return saved
    if not run.checkpoint.is_file():
        return None
    state = safe_load(run.checkpoint)
    if not is_run_checkpoint(state) or not isinstance(state.get("config"), dict):
        return None
    log.info("%s is missing: the settings come from %s", run.config, run.checkpoint)
    return dict(state["config"])


def load_saved_weights(model: torch.nn.Module, state: dict[str, Any], cfg: Config) -> None:
    """The network's weights from a training checkpoint; refused with the settings that
    changed its shape when they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # parameter names or shapes differ
        raise ConfigMismatchError(
            "the checkpoint's network does not fit these settings"
            f"{_model_changes(state.get('config', {}), cfg.to_dict())}: settings that "
            "change the network's shape cannot change on resume; choose another run_dir"
        ) from e


def _model_changes(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """' (model.arch: resnet_tiny -> resnet18, ...)' for the model settings that differ."""
    before, after = saved.get("model", {}), current.get("model", {})
    changed = [
        f"model.{k}: {before.get(k)} -> {after.get(k)}"
        for k in after
        if k in before and before[k] != after[k]
    ]
    return f" ({', '.join(changed)})" if changed else ""


@dataclass(kw_only=True)
class RunState:
    """The training state of a run, with ``state_dict`` / ``load_state_dict`` for checkpoints."""

    cfg: Config
    dist: DistInfo
    model: SwAV
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iters_per_epoch: int
    method: Method
    objective: Objective
    """The objective, whose own state (queue, memory bank) the method saves and restores."""
    epoch: int = 0
    next_batch: int = 0
    corrupt: list[str] = field(default_factory=list)
    budget: Any = None
    """The run's ``TimeBudget`` (its plan and the time spent are saved), None without one."""
    adjustments: Adjustments = field(default_factory=Adjustments)
    sample_offset: int = 0
    """Images of the current epoch read beyond ``next_batch`` whole global batches: non-zero
    only in an epoch resumed on another number of processes."""

    @property
    def global_batch(self) -> int:
        return self.cfg.train.global_batch_of(self.dist.world_size)

    @property
    def samples_in_epoch(self) -> int:
        """Images of the current epoch already trained on, over all processes."""
        return self.next_batch * self.global_batch + self.sample_offset

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's contents (a collective in distributed runs: every rank must call
        it)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "iteration": self.epoch * self.iters_per_epoch + self.next_batch,
            "world_size": self.dist.world_size,
            "samples_in_epoch": self.samples_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "queue": None,
            "objective": None,
            **self.method.save(self.objective, self.dist),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "fingerprint": self.cfg.fingerprint(),
            "corrupt": self._all_corrupt(),
            "recovery": self.adjustments.state_dict(),
            "budget": self.budget.state_dict() if self.budget is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_saved_weights(self.model, state, self.cfg)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load(self.objective, self.dist, state)
        self.epoch, self.next_batch = state["epoch"], state["next_batch"]
        saved_world = int(state.get("world_size", self.dist.world_size))
        if saved_world != self.dist.world_size:  # the position in the epoch, in images
            done = int(state.get("samples_in_epoch", self.next_batch * self.global_batch))
            self.next_batch, self.sample_offset = divmod(done, self.global_batch)
            if self.dist.is_main:
                log.warning(
                    "resuming on %d processes a run saved by %d: epoch %d continues after its "
                    "first %d images",
                    self.dist.world_size,
                    saved_world,
                    self.epoch + 1,
                    done,
                )
        self.corrupt = list(state.get("corrupt", []))
        self.adjustments = Adjustments.from_state(state.get("recovery"))
        set_rng_state(state["rng"])

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (main process; every process takes part)."""
        state = self.state_dict()
        if self.dist.is_main:
            atomic_save(state, path)

    def _all_corrupt(self) -> list[str]:
        """The unreadable images every process met (each reads its own share of the data),
        once each; kept on every process, so that later saves keep them too."""
        if self.dist.enabled:
            lists: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(lists, self.corrupt)
            self.corrupt = list(dict.fromkeys(name for part in lists for name in part or []))
        return list(self.corrupt)
