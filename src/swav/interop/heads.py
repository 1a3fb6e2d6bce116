"""Linear classifiers on backbone features, in every form users bring them.

The reference linear evaluation (``eval_linear.py``, class ``RegLog``) trains one of:
- ``global_avg=True`` (its default): global average pooling, then ``linear`` (2048 -> classes for a
  ResNet-50, 4096 / 8192 for the wide ones);
- ``global_avg=False``: 6 x 6 average pooling with stride 1 on the 7 x 7 map of a 224-px image
  (2 x 2 cells, so 4 x 2048 = 8192 features, channel-major), an optional ``BatchNorm2d(2048)``
  (``use_bn=True``, keys ``bn.*``) after the pooling, then ``linear``.
A torchvision ``fc`` or an mmpretrain ``head.fc`` is the first form. ``LinearHead`` holds any of
them and checks its width against the backbone before anything is computed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swav.engine.checkpoint import safe_load
from swav.errors import SwAVError
from swav.model.swav import SwAV

CELLS = 4
"""Cells of the reference's ``global_avg=False`` pooling: a 6 x 6 window, stride 1, on 7 x 7."""


class HeadError(SwAVError, ValueError):
    """A classifier file that cannot be used with this backbone; the message says why."""


class LinearHead(nn.Module):
    """``linear`` on pooled backbone features: globally pooled (``pooling="global"``), or pooled
    6 x 6 with stride 1 and optionally batch-normalised (``pooling="cells"``). ``pooling=None``
    decides from the backbone's width (``check``)."""

    def __init__(
        self, linear: nn.Linear, pooling: str | None = "global", bn: nn.BatchNorm2d | None = None
    ) -> None:
        super().__init__()
        self.linear, self.bn = linear, bn
        self.pooling = "cells" if bn is not None else pooling

    @property
    def in_features(self) -> int:
        return int(self.linear.in_features)

    @property
    def out_features(self) -> int:
        return int(self.linear.out_features)

    def check(self, model: SwAV) -> None:
        """Refuse a head whose width does not fit ``model``'s backbone; settle ``pooling``."""
        width = int(model.num_features)
        fits = {"global": width, "cells": CELLS * width}
        if self.pooling is None:
            self.pooling = next((p for p, n in fits.items() if n == self.in_features), None)
        if self.pooling is None or fits[self.pooling] != self.in_features:
            raise HeadError(
                f"the classifier takes {self.in_features} features but this backbone gives "
                f"{width} (pooled globally) or {CELLS * width} (the reference's 2 x 2 cells): "
                "use the classifier trained on this backbone"
            )
        if self.bn is not None and self.bn.num_features != width:
            raise HeadError(
                f"the classifier's BatchNorm has {self.bn.num_features} channels, the backbone "
                f"{width}"
            )

    def features(self, model: SwAV, images: Tensor) -> Tensor:
        """The features this head was trained on, for a batch of images."""
        self.check(model)
        if self.pooling == "global":
            return model.forward_backbone(images)
        stages = getattr(model.backbone, "forward_stages", None)
        if stages is None:
            raise HeadError("this classifier pools feature maps: it needs a ResNet backbone")
        fmap = stages(images)[-1]
        if fmap.shape[-2:] != (7, 7):
            raise HeadError(
                "this classifier (the reference's global_avg=False) pools the 7 x 7 map of a "
                f"224-px image, the images give {tuple(fmap.shape[-2:])}: pass --size 224"
            )
        x = F.avg_pool2d(fmap, 6, stride=1)
        if self.bn is not None:
            x = self.bn(x)
        return x.flatten(1)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)

    def classify(self, model: SwAV, images: Tensor) -> Tensor:
        """Class scores (logits) of a batch of images."""
        return self.forward(self.features(model, images))


def linear_layer(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (out x in) and ``bias``."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def load_linear_head(path: str | Path) -> LinearHead:
    """A reference linear-evaluation head (``module.linear.*`` and, with ``use_bn``,
    ``module.bn.*``), or any file holding one linear layer (``*.weight`` / ``*.bias``)."""
    if not Path(path).expanduser().is_file():
        raise HeadError(
            f"no linear head at {path}: give a head file, or a released head's name (see "
            "`swav zoo`)"
        )
    obj = safe_load(Path(path).expanduser())
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise HeadError(f"{path}: expected a state dict, found {type(sd).__name__}")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    weights = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    if len(weights) != 1:
        raise HeadError(f"{path}: expected one linear layer, found {weights}")
    prefix = weights[0][: -len("weight")]
    bn_sd = {k[len("bn.") :]: v for k, v in sd.items() if k.startswith("bn.")}
    unknown = sorted(set(sd) - {prefix + "weight", prefix + "bias"} - {"bn." + k for k in bn_sd})
    if unknown:
        raise HeadError(f"{path}: keys of an unknown head: {unknown[:6]}")
    bn = None
    if bn_sd:
        bn = nn.BatchNorm2d(int(bn_sd["weight"].shape[0]))
        try:
            bn.load_state_dict(bn_sd, strict=True)
        except RuntimeError as e:
            raise HeadError(f"{path}: its bn.* keys are not a BatchNorm2d ({e})") from e
        bn.eval()
    head = LinearHead(linear_layer(sd[weights[0]], sd.get(prefix + "bias")), None, bn)
    return head.eval()
