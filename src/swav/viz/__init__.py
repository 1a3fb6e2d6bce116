"""Pictures of what a run learned. The loss curve is drawn by the engine at the end of training
(``swav.engine.curves``); it is re-exported here with the other figures."""

from swav.engine.curves import plot_loss_curve

__all__ = ["plot_loss_curve"]
