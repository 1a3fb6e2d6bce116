"""The SwAV network: backbones, projection head, prototypes and the multi-crop forward."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BACKBONES": "swav.model.backbones",
    "ResNet": "swav.model.backbones",
    "build_backbone": "swav.model.backbones",
    "MultiPrototypes": "swav.model.heads",
    "Prototypes": "swav.model.heads",
    "projection_head": "swav.model.heads",
    "SwAV": "swav.model.swav",
    "SwAVOutput": "swav.model.swav",
    "build_model": "swav.model.swav",
    "resolution_groups": "swav.model.swav",
}
"""Public name -> its module, imported on first use (the package imports without torch)."""

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
