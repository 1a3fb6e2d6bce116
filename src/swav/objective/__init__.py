"""The SwAV objective: Sinkhorn-Knopp codes, the swapped prediction loss and the feature queue."""

from swav.objective.loss import swapped_prediction_loss
from swav.objective.queue import FeatureQueue
from swav.objective.sinkhorn import sinkhorn

__all__ = ["sinkhorn", "swapped_prediction_loss", "FeatureQueue"]
