"""Training health: is the loss finite, and is the run learning or collapsing?

The collapse SwAV is known for: the codes become uniform (every image gets the same,
uninformative assignment) and the loss settles at ln K. Signals that lead the loss, read at
every flush of the logger after the prototypes are unfrozen:

- **code entropy**: the mean entropy of the first assigned crop's Sinkhorn codes. Uniform codes
  have entropy ln K; healthy runs stay well below (0.3 to 0.8 ln K on the demo);
- **embedding spread**: the standard deviation of the embeddings across the batch, averaged
  over dimensions and scaled by sqrt(d) (1 for embeddings spread evenly on the sphere). A network
  that maps every image to the same point drives it to 0;
- **the loss** within 1 % of ln K: reported with the evidence, but not a sign on its own (with
  a soft temperature the loss starts near ln K in healthy runs too), and it lags the others.

A run whose signals (uniform codes or collapsed embeddings) stay collapsed for ``patience``
iterations is declared collapsed, with the evidence; ``train.on_collapse`` chooses what
follows (see ``swav.engine.recovery``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from swav.errors import SwAVError

log = logging.getLogger(__name__)

UNIFORM_CODES = 0.98
"""Code entropy, as a fraction of ln K, from which the codes count as uniform."""
FLAT_SPREAD = 0.05
"""Embedding spread (scaled by sqrt(d)) under which the embeddings count as collapsed."""

COLLAPSE_ADVICE = (
    "Things that help: keep swav.epsilon at 0.05 or lower it (a large epsilon makes codes "
    "uniform); freeze the prototypes longer (swav.freeze_prototypes_niters); with small batches "
    "use fewer prototypes or a queue (swav.queue_length = 10-20x the global batch, "
    "model.n_prototypes <= batch + queue) and start it later (swav.epoch_queue_starts); lower "
    "the learning rate or lengthen the warmup; or let the run recover by itself "
    "(train.on_collapse=recover)."
)

QUEUE_ADVICE = (
    "since the queue started, the codes of each batch concentrate on very few prototypes "
    "(the queue's equipartition no longer spreads the current batch). Start the queue later "
    "(swav.epoch_queue_starts), once the features have settled, or shorten it "
    "(swav.queue_length)."
)


class NonFiniteLossError(SwAVError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class CollapseError(SwAVError, RuntimeError):
    """Training collapsed and was asked to stop (or could not recover)."""


def code_stats(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy of the codes in nats, number of prototypes that are some sample's argmax)."""
    q = codes.float().clamp_min(1e-12)
    entropy = -(q * q.log()).sum(dim=1).mean()
    used = torch.zeros(codes.shape[1], device=codes.device).index_fill_(0, codes.argmax(1), 1).sum()
    return entropy, used


@dataclass
class Collapse:
    """A declared collapse and its evidence."""

    iteration: int
    since: int
    uniform_codes: bool
    flat_embeddings: bool
    loss_at_ln_k: bool
    entropy_ratio: float
    spread: float | None
    queue_active: bool

    def describe(self) -> str:
        signs = []
        if self.flat_embeddings:
            signs.append(f"embeddings collapsed to one point (spread {self.spread:.3f})")
        if self.uniform_codes:
            signs.append(f"uniform codes (entropy {self.entropy_ratio:.3f} ln K)")
        if self.loss_at_ln_k:
            signs.append("loss at ln K")
        queue = ", with the queue in use" if self.queue_active else ""
        return (
            f"training collapsed at iteration {self.iteration} (since {self.since}{queue}): "
            + "; ".join(signs)
        )


class CollapseMonitor:
    """Declares a collapse when the signals stay collapsed for ``patience`` iterations after
    ``start_iteration`` (the end of the prototype freezing); warns about a queue that
    concentrates the codes.

    Args:
        n_prototypes: K of each head (the codes checked are the first head's).
        patience: iterations the signals must stay collapsed.
        start_iteration: first iteration checked.
        embedding_dim: d, to scale the spread (None: the spread is not checked).
    """

    def __init__(
        self,
        n_prototypes: list[int],
        patience: int,
        start_iteration: int,
        embedding_dim: int | None = None,
    ) -> None:
        self.ln_k = math.log(n_prototypes[0])
        self.reference = sum(math.log(k) for k in n_prototypes) / len(n_prototypes)
        self.patience, self.start = patience, start_iteration
        self.scale = math.sqrt(embedding_dim) if embedding_dim else None
        self.since: int | None = None
        self.declared = False
        self.warned_queue = False

    @property
    def healthy(self) -> bool:
        """False while the signals look collapsed."""
        return self.since is None

    def restart(self, start_iteration: int) -> None:
        """Forget the current episode; check again from ``start_iteration`` (after a recovery)."""
        self.start, self.since, self.declared = start_iteration, None, False

    def observe(
        self,
        losses: list[tuple[int, float]],
        entropy: float,
        spread: float | None,
        queue_active: bool,
    ) -> Collapse | None:
        """Read one flush's signals (losses per iteration, then the last step's code entropy
        and spread); the collapse, the first time it is declared."""
        first, last = losses[0][0], losses[-1][0]
        if last < self.start:
            return None
        ratio = entropy / self.ln_k if self.ln_k > 0 else 0.0
        scaled = None if spread is None or self.scale is None else spread * self.scale
        uniform = ratio >= UNIFORM_CODES
        flat = scaled is not None and scaled < FLAT_SPREAD
        at_ln_k = all(abs(v - self.reference) <= 0.01 * self.reference for _, v in losses)
        if not (uniform or flat):  # a loss near ln K alone is normal early on at a soft T
            self.since, self.declared = None, False
            return None
        if self.since is None:
            self.since = max(first, self.start)
        if self.declared or last - self.since + 1 < self.patience:
            return None
        self.declared = True
        return Collapse(
            last,
            self.since,
            uniform_codes=uniform,
            flat_embeddings=flat,
            loss_at_ln_k=at_ln_k,
            entropy_ratio=ratio,
            spread=scaled,
            queue_active=queue_active,
        )

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
