"""The SwAV objective: Sinkhorn-Knopp codes, the swapped prediction loss, the feature queue, and
``SwAVLoss``, which puts them together for one training step."""

from swav.lazy import lazy_names

_PUBLIC = {
    "swav.objective.loss": ["swapped_prediction_loss"],
    "swav.objective.queue": ["FeatureQueue"],
    "swav.objective.sinkhorn_knopp": ["sinkhorn"],
    "swav.objective.settings": ["SwAVConfig"],
    "swav.objective.swav_loss": ["SwAVLoss", "SwAVStep"],
}
__getattr__ = lazy_names(__name__, _PUBLIC)
__all__ = sorted(name for names in _PUBLIC.values() for name in names)
