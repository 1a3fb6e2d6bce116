"""ONNX export of a SwAV model, checked against PyTorch with onnxruntime.

The graph takes ``images`` (N x 3 x H x W, normalised as the model was trained; N, H and W are
free, H and W from 32) and
returns ``features`` (the pooled backbone features), or with ``heads`` also ``embeddings`` (the
L2-normalised projection) and ``scores`` (one N x K output per prototype head:
``scores``, ``scores_1`` ...). The model's settings (architecture, input size, mean / std) are
kept in the file's metadata. Needs ``onnx`` and ``onnxscript`` (``pip install 'swav[onnx]'``);
the check needs ``onnxruntime``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from swav.data.settings import IMAGENET_MEAN, IMAGENET_STD
from swav.errors import UsageError
from swav.model.conv import plain_convolutions
from swav.model.swav import SwAV


class _Graph(nn.Module):
    """What the exported graph computes: features, and with ``heads`` the rest."""

    def __init__(self, model: SwAV, heads: bool) -> None:
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.model.forward_backbone(images)
        if not self.heads:
            return (features,)
        out = self.model.forward_head(features)
        return (features, out.embeddings, *out.scores)


def output_names(model: SwAV, heads: bool) -> list[str]:
    if not heads:
        return ["features"]
    n = len(model.n_prototypes)
    return ["features", "embeddings", *(["scores"] + [f"scores_{i}" for i in range(1, n)])[:n]]


def input_size(meta: dict[str, Any]) -> int:
    """The image size the model was trained to see whole (its evaluation size), else 224."""
    mc = (meta.get("pretraining") or {}).get("multicrop") or {}
    return int(mc.get("eval_size") or (mc.get("sizes") or [224])[0])


def _missing(module: str) -> UsageError:
    return UsageError(f"--format onnx needs {module}: pip install 'swav[onnx]'")


def export_onnx(model: SwAV, out: Path, meta: dict[str, Any], heads: bool = False) -> Path:
    """Write ``model`` (eval mode, on the CPU, in fp32) to ``out`` as ONNX."""
    try:
        import onnx
    except ImportError:
        raise _missing("onnx") from None
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter builds the graph with it
    except ImportError:
        raise _missing("onnxscript") from None
    if heads and model.projection_head is None and model.prototypes is None:
        raise UsageError("--heads: this model has no projection head or prototypes to export")
    model = model.eval().float().cpu()
    graph = _Graph(model, heads).eval()
    size = input_size(meta)
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    names = output_names(model, heads)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad(), plain_convolutions():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=names,
                dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
                external_data=False,
                verbose=False,
            )
        if program is None:  # only the legacy exporter returns None
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(raw))
        proto = onnx.load(str(raw))
        mc = (meta.get("pretraining") or {}).get("multicrop") or {}
        info = {
            "swav": json.dumps(meta, default=str),
            "input_size": json.dumps([3, size, size]),
            "mean": json.dumps(list(mc.get("mean", IMAGENET_MEAN))),
            "std": json.dumps(list(mc.get("std", IMAGENET_STD))),
            "outputs": json.dumps(names),
        }
        for k, v in info.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        tmp_out = Path(tmp) / "final.onnx"
        onnx.save(proto, str(tmp_out))
        os.replace(tmp_out, out)
    return out


def compare_with_torch(model: SwAV, path: Path, images: Tensor, heads: bool = False) -> float:
    """The largest absolute difference between onnxruntime's outputs for ``images`` and the
    PyTorch model's, over every output."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise _missing("onnxruntime") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.float().numpy()})
    with torch.no_grad():
        want = _Graph(model.eval().float().cpu(), heads)(images.float())
    if len(got) != len(want):
        raise AssertionError(f"{path}: {len(got)} outputs, the model has {len(want)}")
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
