"""The network's settings and the model built from them."""

from __future__ import annotations

from swav.model.settings import ModelConfig
from swav.model.swav import SwAV, build_model

__all__ = ["ModelConfig", "build_from_config"]


def build_from_config(cfg: ModelConfig) -> SwAV:
    """The SwAV network a configuration describes (one prototype head per entry of
    ``n_prototypes``)."""
    protos = cfg.n_prototypes[0] if len(cfg.n_prototypes) == 1 else cfg.n_prototypes
    return build_model(cfg.arch, cfg.hidden_mlp, cfg.output_dim, protos, small_stem=cfg.small_stem)
