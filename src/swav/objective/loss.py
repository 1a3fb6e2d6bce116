"""The swapped prediction loss (SwAV paper, Sec. 3.1, Eq. 1-2, and the multi-crop form of Sec. 3.2).

For every crop i whose codes are computed ("crops_for_assign", the large crops) and every other
crop v != i, the loss is the cross-entropy between the codes q_i and the softmax of the scores of
crop v at temperature tau:

    l(z_v, q_i) = - sum_k q_i^(k) log softmax(z_v^T c_k / tau)         (Eq. 2)

averaged over the batch, then over the V - 1 other crops, then over the assigned crops (and over
the prototype heads when there are several).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def swapped_prediction_loss(
    scores: Sequence[Tensor],
    codes: Sequence[Tensor],
    crops_for_assign: Sequence[int],
    temperature: float = 0.1,
) -> Tensor:
    """Swapped prediction loss for one prototype head, computed in fp32.

    Args:
        scores: one tensor per crop, each B x K: the prototype scores of that crop.
        codes: one tensor per entry of ``crops_for_assign``, each B x K (rows sum to 1), without
            gradient: the Sinkhorn codes of that crop.
        crops_for_assign: indices (into ``scores``) of the crops whose codes are used as targets.
        temperature: softmax temperature tau (0.1 in the paper).
    """
    n_crops = len(scores)
    if n_crops < 2:
        raise ValueError("the swapped prediction needs at least two crops")
    if len(codes) != len(crops_for_assign):
        raise ValueError(
            f"got {len(codes)} code tensors for {len(crops_for_assign)} crops_for_assign"
        )
    log_probs = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=torch.float32)
    for q, i in zip(codes, crops_for_assign):
        q = q.float()
        sub = sum(-(q * log_probs[v]).sum(dim=1).mean() for v in range(n_crops) if v != i)
        total = total + sub / (n_crops - 1)
    return total / len(crops_for_assign)
