"""The SwAV objective: Sinkhorn-Knopp codes, the swapped prediction loss, the feature queue, and
``SwAVLoss``, which puts them together for one training step."""

from swav.objective.loss import swapped_prediction_loss
from swav.objective.queue import FeatureQueue
from swav.objective.sinkhorn import sinkhorn
from swav.objective.swav_loss import SwAVConfig, SwAVLoss, SwAVStep

__all__ = [
    "sinkhorn",
    "swapped_prediction_loss",
    "FeatureQueue",
    "SwAVConfig",
    "SwAVLoss",
    "SwAVStep",
]
