"""swav: self-supervised visual representation learning with SwAV.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020. The library follows the paper's data flow:
data (multi-crop) -> model (backbone, projection head, prototypes) -> objective (queue, Sinkhorn
codes, swapped prediction) -> engine (training) -> interop / eval -> report -> cli.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swav.errors import SwAVError
from swav.lazy import lazy_names

if TYPE_CHECKING:
    from swav.data.multicrop import MultiCrop, MultiCropConfig
    from swav.model import MultiPrototypes, Prototypes, SwAV, build_backbone, build_model
    from swav.objective import FeatureQueue, SwAVLoss, sinkhorn, swapped_prediction_loss

# The public names resolve on first use, so that ``import swav`` (and ``swav --help``) does
# not import torch.
__getattr__ = lazy_names(
    "swav",
    {
        "swav.data.multicrop": ["MultiCrop", "MultiCropConfig"],
        "swav.model": ["MultiPrototypes", "Prototypes", "SwAV", "build_backbone", "build_model"],
        "swav.objective": ["FeatureQueue", "SwAVLoss", "sinkhorn", "swapped_prediction_loss"],
    },
)


def load_checkpoint(
    path_or_name: str | Path,
    ignore: Iterable[str] = (),
    download: bool = False,
    map_location: str = "cpu",
) -> Any:
    """Load any known checkpoint layout (see ``swav.interop.checkpoints.load_checkpoint``)."""
    from swav.interop.checkpoints import load_checkpoint as _load

    return _load(path_or_name, ignore=ignore, download=download, map_location=map_location)


def pretrain(cfg: Any, **options: Any) -> Any:
    """Train as configured (``swav.engine.train.pretrain``), starting a new run from the
    weights ``cfg.model.init`` names when it is set (a released name, a run directory or a
    checkpoint of any known layout)."""
    from swav.engine.run_dir import RunDir
    from swav.engine.train import pretrain as _pretrain

    if cfg.model.init and not RunDir.of(cfg.run_dir).checkpoint.exists():
        from swav.interop.checkpoints import initial_weights

        download = bool(options.pop("download", False))
        options["initial_weights"] = initial_weights(cfg.model.init, download=download)
    return _pretrain(cfg, **options)


__version__ = "0.1.0"

__all__ = [
    "sinkhorn",
    "swapped_prediction_loss",
    "FeatureQueue",
    "SwAVLoss",
    "Prototypes",
    "MultiPrototypes",
    "SwAV",
    "build_model",
    "build_backbone",
    "MultiCrop",
    "MultiCropConfig",
    "SwAVError",
    "load_checkpoint",
    "pretrain",
]
