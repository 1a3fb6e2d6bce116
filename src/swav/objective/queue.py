"""The feature queue for small batches (SwAV paper, Sec. 4.1 and Appendix "small batches").

With few samples per batch, B codes cannot spread over K prototypes. The queue keeps the last
``length`` embeddings of each assigned crop from earlier batches; their scores against the
*current* prototypes are prepended before Sinkhorn, and only the current batch's codes are used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """First-in-first-out store of past embeddings, one row of slots per assigned crop.

    Buffers are allocated at construction (so ``load_state_dict`` restores a queue exactly).
    The queue reports ``active`` only once it is full, which avoids scoring zero vectors.
    Slot 0 holds the newest embedding.

    Args:
        n_crops: number of assigned crops (``len(crops_for_assign)``).
        length: embeddings kept per crop (per process in distributed training).
        dim: embedding dimension.
    """

    embeddings: Tensor
    filled: Tensor

    def __init__(self, n_crops: int, length: int, dim: int) -> None:
        super().__init__()
        if length <= 0:
            raise ValueError(f"queue length must be positive, got {length}")
        self.register_buffer("embeddings", torch.zeros(n_crops, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # a host-side mirror of `filled`, so that `active` needs no device sync
        self._count: int | None = 0
        self.register_load_state_dict_post_hook(_forget_count)

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def active(self) -> bool:
        """True once every slot holds a real embedding."""
        if self._count is None:
            self._count = int(self.filled)
        return self._count >= self.length

    @torch.no_grad()
    def push(self, embeddings: Tensor | list[Tensor]) -> None:
        """Insert one batch per assigned crop (each B x dim), dropping the oldest entries."""
        batches = list(embeddings)
        if len(batches) != self.embeddings.shape[0]:
            raise ValueError(f"expected {self.embeddings.shape[0]} batches, got {len(batches)}")
        b = batches[0].shape[0]
        if b > self.length:
            raise ValueError(f"batch of {b} does not fit in a queue of length {self.length}")
        for i, e in enumerate(batches):
            self.embeddings[i, b:] = self.embeddings[i, :-b].clone()
            self.embeddings[i, :b] = e.detach().to(self.embeddings.dtype)
        if self._count is None:
            self._count = int(self.filled)
        self.filled.add_(b).clamp_(max=self.length)
        self._count = min(self.length, self._count + b)

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (it fills again from the next push)."""
        self.embeddings.zero_()
        self.filled.zero_()
        self._count = 0

    def scores(self, crop: int, prototypes: nn.Module) -> list[Tensor]:
        """Scores of the stored embeddings of one assigned crop against the current prototypes,
        one tensor per prototype head."""
        with torch.no_grad():
            out = prototypes(self.embeddings[crop])
        return out if isinstance(out, list) else [out]


def _forget_count(module: FeatureQueue, incompatible_keys) -> None:
    module._count = None
