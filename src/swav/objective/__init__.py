"""The SwAV objective: Sinkhorn-Knopp codes, the swapped prediction loss, the feature queue, and
``SwAVLoss``, which puts them together for one training step."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "swapped_prediction_loss": "swav.objective.loss",
    "FeatureQueue": "swav.objective.queue",
    "sinkhorn": "swav.objective.sinkhorn_knopp",
    "SwAVConfig": "swav.objective.settings",
    "SwAVLoss": "swav.objective.swav_loss",
    "SwAVStep": "swav.objective.swav_loss",
}
"""Public name -> its module, imported on first use (the package imports without torch)."""

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
