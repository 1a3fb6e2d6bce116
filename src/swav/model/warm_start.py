"""Starting pretraining from weights trained elsewhere (``model.init``).

The backbone is loaded whole (a stem of another shape, e.g. torchvision's 7 x 7 stem into the
small-image stem, starts anew and is named); the projection head is kept when its shapes fit;
the prototypes always start anew, since they cluster the new data. Weights of another
architecture are refused, naming the setting that would fit them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from swav.errors import UsageError
from swav.model.swav import SwAV

log = logging.getLogger(__name__)

STEM = ("conv1.weight",)
HEADS = ("projection_head", "prototypes")
"""The parts of a SwAV model's state dict that are not the backbone (whose keys have no prefix:
``conv1.weight``, ``layer1.0.conv1.weight``, ...)."""


def _is_backbone(key: str) -> bool:
    return not key.startswith(HEADS)


"""Backbone parameters that may differ in shape between the standard and the small stem."""


@dataclass
class WarmStart:
    """What ``warm_start`` loaded and what it left at its initialisation."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = sorted({"backbone" if _is_backbone(k) else k.split(".")[0] for k in self.loaded})
        new = sorted({k if _is_backbone(k) else k.split(".")[0] for k in self.new})
        text = f"{len(self.loaded)} tensors loaded ({', '.join(parts)})"
        return text + (f"; new: {', '.join(new)}" if new else "")


@torch.no_grad()
def warm_start(model: SwAV, weights: Mapping[str, Tensor], source: str = "model.init") -> WarmStart:
    """Load ``weights`` (a SwAV model's state dict: the backbone, ``projection_head.*``) into
    ``model`` for a new run on new data; see the module's docstring for what is kept."""
    own = model.state_dict()
    report = WarmStart()
    backbone = {k: v for k, v in weights.items() if _is_backbone(k)}
    if not backbone:
        raise UsageError(f"{source}: the weights hold no backbone")
    mine = [k for k in own if _is_backbone(k)]
    missing = [k for k in mine if k not in backbone]
    wrong = [
        k for k in mine if k in backbone and backbone[k].shape != own[k].shape and k not in STEM
    ]
    if missing or wrong or len(backbone) != len(mine):
        example = (wrong or missing or sorted(set(backbone) - set(mine)))[:1]
        raise UsageError(
            f"{source}: its backbone is not this run's model.arch (e.g. {example}): set "
            "model.arch to the architecture of the weights (see `swav zoo` for released ones)"
        )
    for k, v in weights.items():
        if k.startswith("prototypes") or k not in own:
            continue
        if v.shape == own[k].shape:
            own[k].copy_(v)
            report.loaded.append(k)
        else:
            report.new.append(k)
    report.new += [k for k in own if k not in report.loaded and k not in report.new]
    log.info("%s: %s", source, report.describe())
    return report


__all__ = ["warm_start", "WarmStart"]
