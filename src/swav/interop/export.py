"""Export a trained backbone to the formats other frameworks read.

- ``torchvision``: a bare state dict with torchvision's ResNet key names (``conv1`` ...
  ``layer4``); ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` reports only
  ``fc`` missing. Metadata goes to a ``.json`` file beside it.
- ``timm``: the same key names (timm's ResNets use torchvision's), as ``.pth``.
- ``safetensors``: the backbone tensors with the metadata in the header.
- ``detectron2``: a ``.pkl`` with ``stem.*`` / ``res2`` ... ``res5`` names and numpy arrays, as
  Detectron2 reads for ResNet transfer to detection.
- ``swav``: the whole model (heads included) with metadata, loadable by ``load_checkpoint``.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from swav.engine.checkpoint import atomic_save, atomic_write
from swav.engine.run_dir import check_writable
from swav.errors import UsageError
from swav.model.swav import SwAV
from swav.values import EXPORT_FORMATS

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS


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


def detectron2_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet names -> Detectron2 names (num_batches_tracked counters left out:
    Detectron2's batch norm has none)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        name = k if k.startswith("layer") else "stem." + k
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}.", f"res{t + 1}.")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}.", f"conv{t}.norm.")
        name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[name] = v
    return out


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


def export_model(
    model: SwAV,
    out: str | Path,
    fmt: str,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> list[Path]:
    """Write ``model`` in ``fmt``; returns the files written. An existing file is replaced
    only with ``force``; a run directory's own checkpoint never."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = check_writable(out, force)
    if fmt in ("torchvision", "timm", "detectron2"):
        check_standard_resnet(model, (meta or {}).get("arch"), fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = shareable_meta(meta or {})
    meta.setdefault("num_features", int(model.num_features))
    meta["format"] = fmt
    written = [out]
    if fmt in ("torchvision", "timm"):
        atomic_save(backbone_state_dict(model), out)
        side = out.with_name(out.name + ".json")
        text = json.dumps(meta, indent=2, default=str).encode()
        written.append(atomic_write(side, lambda f: f.write(text)))
    elif fmt == "safetensors":
        from safetensors.torch import save

        header = {k: json.dumps(v, default=str) for k, v in meta.items()}
        data = save(backbone_state_dict(model), metadata=header)
        atomic_write(out, lambda f: f.write(data))
    elif fmt == "detectron2":
        sd = backbone_state_dict(model)
        model_d2 = {k: v.numpy() for k, v in detectron2_names(sd).items()}
        counters = [k for k in sd if k.endswith("num_batches_tracked")]
        if counters:
            log.info(
                "detectron2: %d num_batches_tracked counters left out (Detectron2's batch norm "
                "has no such buffer; they do not affect the weights)",
                len(counters),
            )
            meta["left_out"] = f"{len(counters)} num_batches_tracked counters"
        content = {
            "model": model_d2,
            "__author__": "swav",
            "matching_heuristics": True,
            "swav_meta": json.dumps(meta, default=str),
        }
        atomic_write(out, lambda f: pickle.dump(content, f))
    else:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta_plain = json.loads(json.dumps(meta, default=str))
        atomic_save({"state_dict": sd, "swav_meta": meta_plain}, out)
    return written
