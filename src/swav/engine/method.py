"""The seam between the training loop and the method it trains.

A method (SwAV, DeepCluster-v2, SeLa-v2, or one of a user's own) is a ``Method`` registered in
``METHODS`` under the name ``method=`` selects. The loop knows methods only through this
interface:

- ``check``: the method's own rules on the configuration, before anything is built;
- ``build_objective``: the objective it trains (the loss of a step, the prototypes' freezing
  rule, and its own state: SwAV's feature queue, the clustering methods' memory bank);
- ``prepare``: what it needs before the epochs run, and again after a rewind (a memory bank's
  first fill);
- ``start_epoch``: what it does when an epoch starts (pseudo-labels);
- ``save`` / ``load``: the entries it keeps in the run's checkpoint;
- ``health_note``: what a collapse warning should add about it.

A method is registered with ``register_method`` (``swav.engine.methods`` registers the three
built-in ones); nothing in the engine names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from swav.config import Config
from swav.data.loader import EpochSampler
from swav.data.settings import is_stream
from swav.data.stream import StreamDataset
from swav.engine.distributed import DistInfo
from swav.errors import ConfigError
from swav.model.swav import SwAV
from swav.objective.settings import SwAVConfig
from swav.objective.swav_loss import Objective


class TrainingContext(Protocol):
    """What a method's hooks see of a training process (the engine's ``Trainer``)."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    core: SwAV
    objective: Objective
    sampler: EpochSampler | StreamDataset
    loader: DataLoader
    autocast: Any

    @property
    def epoch(self) -> int:
        """The epoch the run is at (the next one to train)."""
        ...

    def to_device(
        self, crops: list[Any], indices: torch.Tensor
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """A loader batch's crops on the device (None when fewer than two images are left)."""
        ...

    def record(self, kind: str, **values: Any) -> None:
        """A record in the run's ``metrics.jsonl`` (main process)."""
        ...


@dataclass(frozen=True)
class ObjectiveInputs:
    """What a method builds its objective from."""

    cfg: Config
    swav: SwAVConfig
    """The run's live copy of the objective settings: recoveries change it, never ``cfg``."""
    core: SwAV
    world_size: int
    images: int
    """Images in the data (for a stream: samples in an epoch)."""
    bank_rows: int
    """This process's images in one epoch."""


class Method:
    """A training method; subclass it, set ``name`` and register an instance.

    Every hook but ``build_objective`` has a default that does nothing, so a method that only
    defines a loss is one class with one function."""

    name: str = ""
    streams: bool = True
    """Whether it trains from a streaming source (no memory indexed by image)."""

    def check(self, cfg: Config, world_size: int) -> None:
        """Refuse settings this method cannot train with (raise ``ConfigError``)."""

    def build_objective(self, given: ObjectiveInputs) -> Objective:
        """The objective of one training process."""
        raise NotImplementedError

    def prepare(self, t: TrainingContext) -> None:
        """Before the first epoch of this process, and after a rewind to a healthy state."""

    def start_epoch(self, t: TrainingContext, epoch: int) -> None:
        """At the start of every epoch (a resumed one included)."""

    def save(self, objective: Objective, dist: DistInfo) -> dict[str, Any]:
        """Checkpoint entries of this method's state (a collective in distributed runs)."""
        return {}

    def load(self, objective: Objective, dist: DistInfo, state: dict[str, Any]) -> None:
        """The state ``save`` wrote, from a checkpoint."""


METHODS: dict[str, Method] = {}
"""The registered methods by name (``method=`` in the configuration)."""


def register_method(method: Method) -> Method:
    """Add ``method`` to ``METHODS`` under its name (replacing one of the same name)."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    METHODS[method.name] = method
    return method


def method_of(cfg: Config, world_size: int = 1) -> Method:
    """The method ``cfg.method`` names, its rules checked against ``cfg``."""
    method = METHODS.get(cfg.method)
    if method is None:
        raise ConfigError(f"method: must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if not method.streams and is_stream(cfg.data.source):
        raise ConfigError(
            f"method: {cfg.method} keeps a memory bank indexed by image, which a streaming "
            "source has not: pack the data with `swav shards` and give the shard folder instead"
        )
    method.check(cfg, world_size)
    return method
