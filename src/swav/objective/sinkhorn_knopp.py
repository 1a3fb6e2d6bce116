"""Sinkhorn-Knopp codes with the equal-partition constraint (SwAV paper, Sec. 3.1, Eq. 3-5).

Given prototype scores ``s = z C^T`` for a batch (B x K), the codes are the solution of the
entropy-regularised transport problem ``max_Q Tr(Q^T C^T Z) + eps H(Q)`` over the transportation
polytope in which every prototype receives B/K of the mass and every sample 1 (Eq. 3-4).
The solution is ``Q* = Diag(u) exp(C^T Z / eps) Diag(v)`` (Eq. 5); the scaling vectors ``u`` (one
per prototype) and ``v`` (one per sample) are found with a few Sinkhorn-Knopp iterations.

The reference algorithm normalises Q by its total, then alternates row (prototype) and column
(sample) normalisations. Here the same iterates are computed through the scaling vectors, so each
iteration is two matrix-vector products over a read-only kernel instead of four passes that write
B x K tensors; the result equals the plain formula wherever that formula does not overflow.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

# Below this a kernel column is treated as underflowed (fp32 loses precision in subnormals).
_UNDERFLOW = 1e-30
# Scores within +-60 eps: exp(s / eps) lies in [1e-26, 1e26], so neither an entry nor a sum of
# millions of them leaves the normal fp32 range, and no shift is needed.
_DIRECT = 60.0


def _dist_ready(distributed: bool) -> bool:
    return distributed and dist.is_available() and dist.is_initialized()


def _all_reduce(t: Tensor, op=None) -> Tensor:
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def sinkhorn(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    distributed: bool = True,
    method: str = "auto",
) -> Tensor:
    """Codes ``Q^T`` (B x K) for prototype scores (B x K), each row summing to 1.

    Args:
        scores: cosine similarities between the embeddings and the prototypes, B x K, any dtype.
            They are cast to fp32 first: ``exp(s / eps)`` overflows fp16 at eps = 0.05.
        epsilon: entropy regularisation eps of Eq. 3. Smaller is closer to a hard assignment but
            less smooth; the paper uses 0.05 and reports collapse-like behaviour for large values.
        iterations: number of Sinkhorn-Knopp iterations (3 in the paper: enough for the
            equipartition to hold approximately, and cheap).
        distributed: when ``torch.distributed`` is initialised, reduce the prototype masses and
            the batch size over all ranks so that the equal partition is global (each rank may
            hold a different number of samples). ``False`` normalises each rank on its own.
        method: ``"scaling"`` (exp-domain scaling vectors, fastest), ``"log"`` (log domain, robust
            to any score range) or ``"auto"`` (scaling, falling back to the log domain when a
            sample's kernel column underflows, e.g. at eps = 0.01 with large scores).

    Returns:
        B x K fp32 codes; every row sums to 1 and, as iterations grow, every column to B/K.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be B x K, got shape {tuple(scores.shape)}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if method not in ("auto", "scaling", "log"):
        raise ValueError(f"method must be 'auto', 'scaling' or 'log', got {method!r}")
    use_dist = _dist_ready(distributed)
    scores = scores.detach().float()
    batch = torch.tensor([float(scores.shape[0])], device=scores.device)
    if use_dist:
        _all_reduce(batch)
    if method == "log":
        return _sinkhorn_log(scores / epsilon, iterations, batch, use_dist)

    # One pass for the range of the scores. When every exp(s / eps) is a normal fp32 number
    # well away from overflow (|s| / eps <= 60: cosine scores at eps >= 1/60), the kernel is
    # exp(s / eps) itself; otherwise each prototype's scores are shifted by their maximum over
    # the (global) batch first. A per-row shift is absorbed exactly by the first row
    # normalisation (as is the division by the total mass), so the iterates are those of the
    # plain formula either way.
    lo, hi = torch.aminmax(scores)
    bound = torch.maximum(hi, -lo)
    if use_dist:
        _all_reduce(bound, dist.ReduceOp.MAX)
    if bool(bound <= _DIRECT * epsilon):
        kernel = torch.mul(scores, 1.0 / epsilon).exp_()  # B x K, a new tensor
        return _sinkhorn_scaling(kernel, iterations, batch, use_dist)
    row_max = scores.max(dim=0).values  # K
    if use_dist:
        _all_reduce(row_max, dist.ReduceOp.MAX)
    kernel = torch.sub(scores, row_max).mul_(1.0 / epsilon).exp_()  # B x K in (0, 1], in place
    if method == "auto":
        # No entry can underflow when the whole score range is under 80 eps (e^-80 is a normal
        # fp32 number). Otherwise look for a sample whose kernel column underflowed, and use
        # the log domain for this batch.
        spread = row_max.max() - lo
        if use_dist:
            _all_reduce(spread, dist.ReduceOp.MAX)
        if bool(spread / epsilon >= 80.0):
            underflow = (kernel.amax(dim=1).min() < _UNDERFLOW).float()
            if use_dist:
                _all_reduce(underflow, dist.ReduceOp.MAX)
            if bool(underflow > 0):
                return _sinkhorn_log(scores / epsilon, iterations, batch, use_dist)
    return _sinkhorn_scaling(kernel, iterations, batch, use_dist)


def _sinkhorn_scaling(kernel: Tensor, iterations: int, batch: Tensor, use_dist: bool) -> Tensor:
    n_protos = kernel.shape[1]
    v = torch.ones(kernel.shape[0], device=kernel.device)  # per-sample scaling
    u = torch.ones(n_protos, device=kernel.device)  # per-prototype scaling
    for _ in range(iterations):
        # rows: Q <- Q / rowsum(Q) / K, the row sums taken over all ranks
        row = kernel.t().mv(v)
        if use_dist:
            _all_reduce(row)
        u = 1.0 / (row * n_protos)
        # columns: Q <- Q / colsum(Q) / B (each sample lives on one rank)
        col = kernel.mv(u)
        v = 1.0 / (col * batch)
    # Q <- Q * B, returned transposed (B x K): codes[b, k] = B * v_b * kernel[b, k] * u_k,
    # written over the kernel (which nothing else holds)
    return kernel.mul_((v * batch).unsqueeze(1)).mul_(u.unsqueeze(0))


def _logsumexp_global(x: Tensor, dim: int, use_dist: bool) -> Tensor:
    """logsumexp over ``dim``; for dim 0 (the batch), over every rank's samples."""
    if not use_dist or dim != 0:
        return torch.logsumexp(x, dim=dim)
    m = x.max(dim=0).values
    _all_reduce(m, dist.ReduceOp.MAX)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum(dim=0)
    _all_reduce(s)
    return m + torch.log(s)


def _sinkhorn_log(logits: Tensor, iterations: int, batch: Tensor, use_dist: bool) -> Tensor:
    n_protos = logits.shape[1]
    log_k = math.log(n_protos)
    log_b = torch.log(batch)
    log_v = torch.zeros(logits.shape[0], device=logits.device)
    log_u = torch.zeros(n_protos, device=logits.device)
    for _ in range(iterations):
        log_u = -log_k - _logsumexp_global(logits + log_v.unsqueeze(1), 0, use_dist)
        log_v = -log_b - torch.logsumexp(logits + log_u.unsqueeze(0), dim=1)
    return torch.exp(logits + log_u.unsqueeze(0) + (log_v + log_b).unsqueeze(1))
