"""swav: self-supervised visual representation learning with SwAV.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020. The library follows the paper's data flow:
data (multi-crop) -> model (backbone, projection head, prototypes) -> objective (queue, Sinkhorn
codes, swapped prediction) -> engine (training) -> eval -> interop.
"""

from swav.data.multicrop import MultiCrop, MultiCropConfig
from swav.model import MultiPrototypes, Prototypes, SwAV, build_backbone, build_model
from swav.objective import FeatureQueue, sinkhorn, swapped_prediction_loss


def load_checkpoint(path_or_name, ignore=(), download=False, map_location="cpu"):
    """Load any known checkpoint layout (see ``swav.interop.checkpoints.load_checkpoint``)."""
    from swav.interop.checkpoints import load_checkpoint as _load

    return _load(path_or_name, ignore=ignore, download=download, map_location=map_location)


__version__ = "0.1.0"

__all__ = [
    "sinkhorn",
    "swapped_prediction_loss",
    "FeatureQueue",
    "Prototypes",
    "MultiPrototypes",
    "SwAV",
    "build_model",
    "build_backbone",
    "MultiCrop",
    "MultiCropConfig",
    "load_checkpoint",
]
