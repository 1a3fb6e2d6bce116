"""What every export format shares: the backbone's tensors, which backbones the standard
libraries (torchvision, timm, Detectron2) can build, and metadata without local paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from swav.errors import UsageError
from swav.model.swav import SwAV


def backbone_state_dict(model: SwAV) -> dict[str, torch.Tensor]:
    sd = model.backbone.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
"""The backbones torchvision, timm and Detectron2 build with the same parameter names."""


def check_standard_resnet(model: SwAV, arch: str | None, fmt: str) -> None:
    """Refuse, with the reason, a ``torchvision`` / ``timm`` / ``detectron2`` export of a
    backbone that those libraries cannot build: another architecture (``resnet_tiny``, the
    wide ResNets) or the small stem of 32-64 px training. Checked against torchvision's model
    of the same name, parameter by parameter."""
    advice = "export with --format safetensors or --format swav, which hold any backbone"
    if arch not in TORCHVISION_RESNETS:
        raise UsageError(
            f"--format {fmt}: {fmt} has no {arch or 'unnamed'} backbone (it builds "
            f"{', '.join(TORCHVISION_RESNETS)}); {advice}"
        )
    import torchvision

    reference = torchvision.models.get_model(arch, weights=None).state_dict()
    ours = backbone_state_dict(model)
    for key, value in ours.items():
        if key in reference and reference[key].shape != value.shape:
            theirs, mine = tuple(reference[key].shape), tuple(value.shape)
            raise UsageError(
                f"--format {fmt}: this {arch} differs from {fmt}'s ({key}: {mine} here, {theirs} "
                f"there; the small stem of 32-64 px training?), so {fmt} could not load it; "
                + advice
            )
    missing = [k for k in reference if k not in ours and not k.startswith("fc.")]
    if missing or any(k not in reference for k in ours):
        raise UsageError(f"--format {fmt}: this backbone's parameters are not {arch}'s; {advice}")


def shareable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` without local paths (an exported file is often shared): the source checkpoint,
    the pretraining data and run directory are kept by name only."""
    meta = json.loads(json.dumps(meta, default=str))
    if meta.get("source"):
        meta["source"] = Path(str(meta["source"])).name
    pre = meta.get("pretraining")
    if isinstance(pre, dict):
        if pre.get("run_dir"):
            pre["run_dir"] = Path(str(pre["run_dir"])).name
        data = pre.get("data")
        if isinstance(data, dict) and data.get("source") and "/" in str(data["source"]):
            data["source"] = Path(str(data["source"])).name
        if isinstance(data, dict) and data.get("root"):
            data["root"] = Path(str(data["root"])).name
    return meta
