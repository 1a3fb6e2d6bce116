"""Projection head and prototypes (SwAV paper, Sec. 3.1 and Appendix A).

The projection head maps backbone features to the embedding z (Linear -> BatchNorm1d -> ReLU ->
Linear, then L2 normalisation). The prototypes C are a bias-free linear layer whose rows are kept
at unit norm, so the scores z^T c_k are cosine similarities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def projection_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Module | None:
    """Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out); ``hidden_dim=0`` gives a single
    Linear and ``out_dim=0`` no head at all (the embedding is then the backbone feature).

    Keys (``0.weight``, ``1.running_mean``, ``3.weight`` ...) match the reference release.
    """
    if out_dim == 0:
        return None
    if hidden_dim == 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class Prototypes(nn.Module):
    """K prototype vectors c_k (rows of ``weight``, K x dim), bias-free, unit L2 norm.

    ``normalize_()`` projects the rows back onto the unit sphere in place, without gradient, as the
    paper does before every forward pass (the SwAV model calls it at the start of each training
    forward, so the rows stay unit-norm by construction for every caller of the model).
    """

    def __init__(self, dim: int, n_prototypes: int) -> None:
        super().__init__()
        if n_prototypes <= 0:
            raise ValueError(f"the number of prototypes must be positive, got {n_prototypes}")
        self.weight = nn.Parameter(torch.empty(n_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default initialisation
        self.normalize_()

    @property
    def n_prototypes(self) -> list[int]:
        return [self.weight.shape[0]]

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1, p=2))

    def forward(self, z: Tensor) -> Tensor:
        return F.linear(z, self.weight)


class MultiPrototypes(nn.Module):
    """Several prototype heads of different sizes (the paper's multi-clustering variant).

    Keys ``prototypes{i}.weight`` match the reference release. ``forward`` returns one score
    tensor per head.
    """

    def __init__(self, dim: int, n_prototypes: Sequence[int]) -> None:
        super().__init__()
        self.nmb_heads = len(n_prototypes)
        for i, k in enumerate(n_prototypes):
            self.add_module(f"prototypes{i}", Prototypes(dim, k))

    def heads(self) -> list[Prototypes]:
        return [getattr(self, f"prototypes{i}") for i in range(self.nmb_heads)]

    @property
    def n_prototypes(self) -> list[int]:
        return [p.weight.shape[0] for p in self.heads()]

    @torch.no_grad()
    def normalize_(self) -> None:
        for p in self.heads():
            p.normalize_()

    def forward(self, z: Tensor) -> list[Tensor]:
        return [p(z) for p in self.heads()]


def build_prototypes(
    dim: int, n_prototypes: int | Sequence[int]
) -> Prototypes | MultiPrototypes | None:
    """``Prototypes`` for an int, ``MultiPrototypes`` for a list, nothing for 0 / []."""
    if isinstance(n_prototypes, int):
        return Prototypes(dim, n_prototypes) if n_prototypes > 0 else None
    n_prototypes = [int(k) for k in n_prototypes]
    if not n_prototypes:
        return None
    return MultiPrototypes(dim, n_prototypes)
