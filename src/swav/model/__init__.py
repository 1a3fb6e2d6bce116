"""The SwAV network: backbones, projection head, prototypes and the multi-crop forward."""

from swav.lazy import lazy_names

_PUBLIC = {
    "swav.model.backbones": ["BACKBONES", "ResNet", "build_backbone"],
    "swav.model.heads": ["MultiPrototypes", "Prototypes", "projection_head"],
    "swav.model.swav": ["SwAV", "SwAVOutput", "build_model", "resolution_groups"],
}
__getattr__ = lazy_names(__name__, _PUBLIC)
__all__ = sorted(name for names in _PUBLIC.values() for name in names)
