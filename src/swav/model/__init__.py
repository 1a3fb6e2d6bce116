"""The SwAV network: backbones, projection head, prototypes and the multi-crop forward."""

from swav.model.backbones import BACKBONES, ResNet, build_backbone
from swav.model.heads import MultiPrototypes, Prototypes, projection_head
from swav.model.swav import SwAV, SwAVOutput, build_model, resolution_groups

__all__ = [
    "BACKBONES",
    "ResNet",
    "build_backbone",
    "Prototypes",
    "MultiPrototypes",
    "projection_head",
    "SwAV",
    "SwAVOutput",
    "build_model",
    "resolution_groups",
]
