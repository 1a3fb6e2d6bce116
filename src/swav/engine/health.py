"""Training health: is the loss finite, are the codes spread over the prototypes?

The collapse SwAV is known for shows as a loss stuck at ln K (uniform codes: every image gets the
same, uninformative assignment). ``CollapseMonitor`` watches for it after the prototypes are
unfrozen; ``code_stats`` gives the entropy of the codes and the prototypes they use.
"""

from __future__ import annotations

import logging
import math

import torch

from swav.errors import SwAVError

log = logging.getLogger(__name__)

COLLAPSE_ADVICE = (
    "the assignments look collapsed to uniform (loss within 1% of ln K). Things that help: "
    "keep swav.epsilon at 0.05 or lower it (a large epsilon makes codes uniform); freeze the "
    "prototypes longer (swav.freeze_prototypes_niters); with small batches use a queue "
    "(swav.queue_length = 10-20x the global batch) and start it later (swav.epoch_queue_starts); "
    "lower the learning rate or lengthen the warmup."
)


class NonFiniteLossError(SwAVError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def code_stats(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy of the codes in nats, number of prototypes that are some sample's argmax)."""
    q = codes.float().clamp_min(1e-12)
    entropy = -(q * q.log()).sum(dim=1).mean()
    used = torch.zeros(codes.shape[1], device=codes.device).index_fill_(0, codes.argmax(1), 1).sum()
    return entropy, used


QUEUE_ADVICE = (
    "since the queue started, the codes of each batch concentrate on very few prototypes "
    "(the queue's equipartition no longer spreads the current batch). Start the queue later "
    "(swav.epoch_queue_starts), once the features have settled, or shorten it "
    "(swav.queue_length)."
)


class CollapseMonitor:
    """Warns once when the loss stays within 1% of ln K for ``patience`` iterations."""

    def __init__(self, n_prototypes: list[int], patience: int, start_iteration: int) -> None:
        self.reference = sum(math.log(k) for k in n_prototypes) / len(n_prototypes)
        self.patience = patience
        self.start = start_iteration
        self.streak = 0
        self.warned = False
        self.warned_queue = False
        self.queue_active = False

    def check_usage(self, used: int, batch: int, n_prototypes: int, queue_active: bool) -> bool:
        """Warns once when, with the queue on, a batch's codes use under 10% of the prototypes
        they could use. True the first time it fires."""
        if not queue_active or self.warned_queue:
            return False
        if used < max(2, 0.1 * min(batch, n_prototypes)):
            self.warned_queue = True
            log.warning(
                "only %d prototypes in use for a batch of %d: %s", used, batch, QUEUE_ADVICE
            )
            return True
        return False

    def update(self, iteration: int, loss: float) -> bool:
        """True the first time the warning fires."""
        if iteration < self.start:
            return False
        if abs(loss - self.reference) <= 0.01 * self.reference:
            self.streak += 1
        else:
            self.streak = 0
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            log.warning(
                "iteration %d: loss %.4f vs ln K = %.4f for %d iterations: %s",
                iteration,
                loss,
                self.reference,
                self.streak,
                COLLAPSE_ADVICE,
            )
            return True
        return False
