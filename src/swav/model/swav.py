"""The SwAV network: backbone -> projection head -> L2 normalisation -> prototypes.

Multi-crop forward (SwAV paper, Sec. 3.2): consecutive crops of the same resolution go through the
backbone in one batched pass (so BatchNorm statistics are per resolution group, as in the paper),
and the projection head runs once on the features of all crops together.

State-dict keys follow the reference release (``conv1 ... layer4``, ``projection_head.*``,
``prototypes.weight`` or ``prototypes.prototypes{i}.weight``): the backbone's keys are written
without a ``backbone.`` prefix, so released files load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swav.model.backbones import build_backbone
from swav.model.heads import build_prototypes, projection_head

_BACKBONE = "backbone."


@dataclass
class SwAVOutput:
    """Outputs for all crops, concatenated in crop order (crop v is rows v*B:(v+1)*B).

    embeddings: L2-normalised z, N x dim. scores: one N x K tensor per prototype head.
    """

    embeddings: Tensor
    scores: list[Tensor]


def resolution_groups(crops: Sequence[Tensor]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive crops sharing a spatial size."""
    groups, start = [], 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


class SwAV(nn.Module):
    """Backbone, projection head and prototypes.

    Args:
        backbone: a module mapping images to pooled features, with ``num_features``.
        hidden_mlp: hidden width of the projection head (0: a single linear layer).
        output_dim: embedding dimension (0: no head, the embedding is the backbone feature).
        n_prototypes: K, or a list of K values for several prototype heads, or 0 for none.
        normalize: L2-normalise the embedding (the paper does; the scores are then cosines).
    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden_mlp: int = 2048,
        output_dim: int = 128,
        n_prototypes: int | Sequence[int] = 3000,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        feat_dim = feature_dim(backbone)
        self.projection_head = projection_head(feat_dim, hidden_mlp, output_dim)
        self.embedding_dim = output_dim if output_dim > 0 else feat_dim
        self.prototypes = build_prototypes(self.embedding_dim, n_prototypes)
        self.normalize = normalize
        self.register_state_dict_post_hook(_drop_backbone_prefix)
        self.register_load_state_dict_pre_hook(_add_backbone_prefix)

    @property
    def num_features(self) -> int:
        return feature_dim(self.backbone)

    @property
    def n_prototypes(self) -> list[int]:
        return [] if self.prototypes is None else self.prototypes.n_prototypes

    def forward_backbone(self, crops: Tensor | Sequence[Tensor]) -> Tensor:
        """Pooled backbone features; a list of crops is batched per resolution group."""
        if isinstance(crops, Tensor):
            return self.backbone(crops)
        feats = [self.backbone(torch.cat(list(crops[s:e]))) for s, e in resolution_groups(crops)]
        return torch.cat(feats)

    def forward_head(self, features: Tensor) -> SwAVOutput:
        """Projection, normalisation and prototype scores for backbone features."""
        z = features if self.projection_head is None else self.projection_head(features)
        if self.normalize:
            z = F.normalize(z, dim=1, p=2)
        if self.prototypes is None:
            return SwAVOutput(z, [])
        scores = self.prototypes(z)
        return SwAVOutput(z, scores if isinstance(scores, list) else [scores])

    def forward(self, crops: Tensor | Sequence[Tensor]) -> SwAVOutput:
        if self.training and self.prototypes is not None:
            self.prototypes.normalize_()  # rows back on the unit sphere before every step
        return self.forward_head(self.forward_backbone(crops))


def feature_dim(backbone: nn.Module) -> int:
    """The width of a backbone's pooled features (its ``num_features``)."""
    n: Any = backbone.num_features
    return int(n)


def _drop_backbone_prefix(module, state_dict, prefix, local_metadata) -> None:
    # rebuilt in place so the key order stays that of the reference (backbone first)
    items = list(state_dict.items())
    state_dict.clear()
    inner = prefix + _BACKBONE
    for key, value in items:
        state_dict[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _add_backbone_prefix(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
) -> None:
    own = ("projection_head.", "prototypes.", _BACKBONE)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if not rest.startswith(own):
            state_dict[prefix + _BACKBONE + rest] = state_dict.pop(key)


def build_model(
    arch: str = "resnet50",
    hidden_mlp: int = 2048,
    output_dim: int = 128,
    n_prototypes: int | Sequence[int] = 3000,
    small_stem: bool = False,
    zero_init_residual: bool = False,
) -> SwAV:
    """A SwAV model with a named backbone (see ``swav.model.backbones.BACKBONES``)."""
    backbone = build_backbone(arch, small_stem=small_stem, zero_init_residual=zero_init_residual)
    return SwAV(backbone, hidden_mlp, output_dim, n_prototypes)
