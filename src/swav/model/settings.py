"""The network's settings (``model.*``), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field


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
