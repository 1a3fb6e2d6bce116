"""The network's settings and the model built from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from swav.model.swav import SwAV, build_model


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    """Backbone: resnet18/34/50/101/152, resnet50w2/w4/w5 (the paper's wide ResNets),
    resnet18_half / resnet_tiny (narrow ResNets for small data), or timm:<name>."""
    small_stem: bool = False
    """3x3 stride-1 first conv and no max-pool: use it for 32-64 px images (CIFAR, digits)."""
    hidden_mlp: int = 2048
    """Hidden width of the projection head; 0 gives a single linear layer."""
    output_dim: int = 128
    """Embedding (feature) dimension of the prototypes; 0 means no projection head."""
    n_prototypes: list[int] = field(default_factory=lambda: [3000])
    """K per prototype head. The paper uses 3000 on ImageNet and finds K matters little as long
    as it is well above the number of classes; use ~10x the expected classes on small data."""
    init: str = ""
    """Start a new run from trained weights (empty: random initialisation): a released name
    (`swav zoo`), a run directory, or a checkpoint of any layout `swav.load_checkpoint` reads
    (the reference release, torchvision and timm ResNet files, this project's exports). The
    backbone and a projection head of the same shape are loaded; the prototypes start anew for
    the new data. model.arch must be the weights' architecture."""


def build_from_config(cfg: ModelConfig) -> SwAV:
    """The SwAV network a configuration describes (one prototype head per entry of
    ``n_prototypes``)."""
    protos = cfg.n_prototypes[0] if len(cfg.n_prototypes) == 1 else cfg.n_prototypes
    return build_model(cfg.arch, cfg.hidden_mlp, cfg.output_dim, protos, small_stem=cfg.small_stem)
