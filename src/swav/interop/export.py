"""Export a trained backbone to the formats other frameworks read.

- ``torchvision``: a bare state dict with torchvision's ResNet key names (``conv1`` ...
  ``layer4``); ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` reports only
  ``fc`` missing. Metadata goes to a ``.json`` file beside it.
- ``timm``: a folder that ``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads:
  ``model.safetensors`` (timm's ResNets use torchvision's names) and ``config.json`` with the
  architecture and its ``pretrained_cfg`` (input size, mean / std, no classifier).
- ``onnx``: the backbone (pooled features), or with ``heads`` the whole model (features,
  normalised embedding, prototype scores), batch and image size left free; checked against
  PyTorch with onnxruntime when it is installed.
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
from swav.engine.run_dir import check_writable, guard_output
from swav.errors import UsageError
from swav.interop.formats import (
    backbone_state_dict,
    check_standard_resnet,
    shareable_meta,
)
from swav.model.swav import SwAV
from swav.values import EXPORT_FORMATS

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS


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


FOLDER_FORMATS = ("timm",)
"""Formats written as a folder (``--out`` names the folder)."""


def check_export_output(out: str | Path, fmt: str, force: bool = False) -> Path:
    """``out`` as the output of format ``fmt``, refused before any work: a file for most
    formats, a folder for ``timm`` (an existing non-empty one only with ``force``)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt not in FOLDER_FORMATS:
        return check_writable(out, force)
    path = guard_output(out, force, folder=True, what=f"--format {fmt} output folder", empty=True)
    if path.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors"):
        raise UsageError(
            f"--format {fmt} writes a folder (config.json + model.safetensors, what "
            f'timm.create_model("local-dir:FOLDER") reads), not a {path.suffix} file: give a '
            "folder name"
        )
    return path


def export_model(
    model: SwAV,
    out: str | Path,
    fmt: str,
    meta: dict[str, Any] | None = None,
    force: bool = False,
    heads: bool = False,
) -> list[Path]:
    """Write ``model`` in ``fmt``; returns the files written. An existing file is replaced
    only with ``force``; a run directory's own checkpoint never. ``heads``: the ONNX graph
    holds the whole model (features, embedding, prototype scores), not the backbone alone."""
    out = check_export_output(out, fmt, force)
    if fmt in ("torchvision", "timm", "detectron2"):
        check_standard_resnet(model, (meta or {}).get("arch"), fmt)
    if fmt == "timm":
        from swav.interop.model_folder import write_model_folder

        extra = {k: v for k, v in (meta or {}).items() if k not in ("arch", "pretraining")}
        return write_model_folder(
            model,
            out,
            arch=(meta or {}).get("arch"),
            timm_arch=(meta or {}).get("arch"),  # checked above
            pretraining=(meta or {}).get("pretraining"),
            heads=False,
            extra=extra,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = shareable_meta(meta or {})
    meta.setdefault("num_features", int(model.num_features))
    meta["format"] = fmt
    written = [out]
    if fmt == "onnx":
        from swav.interop.onnx import export_onnx

        export_onnx(model, out, meta, heads=heads)
    elif fmt == "torchvision":
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
