"""The ResNet stem's BatchNorm, ReLU and 3 x 3 max-pool as one operation, for CPU training.

BatchNorm in training is a per-channel affine map ``z = a y + b`` (``a = gamma / sigma``,
``b = beta - mu a``, from the batch statistics of the convolution output ``y``), and ReLU and
max-pooling commute with it where ``a >= 0``: ``maxpool(relu(a y + b)) = relu(a maxpool(y) + b)``
(``minpool`` where ``a < 0``). So the stem needs the statistics of ``y`` (reductions) and a
pool of ``y``, and never builds the normalised full-size map nor its ReLU. In the backward
pass the gradient reaches ``y`` only at the pooled positions, so the BatchNorm sums come from
the pooled map too, and the full-size gradient is the scattered pooled gradient plus a
per-channel ``c1 y + c0``, made in place.

On a 64 px crop batch of 128 the stem's map is 32 MiB; each full-size tensor of that size that
the separate operations would allocate is fresh memory for the allocator and costs page faults,
so this removes three of them per step (values and gradients equal to the separate modules; see
``tests/model/test_stem.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_K, _S, _P = 3, 2, 1  # the stem's max-pool: kernel, stride, padding


def _pool_signed(y: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Max-pool of ``y`` per channel, min-pool for the channels flagged ``negative``: the pooled
    values of ``y`` and their flat indices in each H x W plane."""
    p, idx = F.max_pool2d(y, _K, _S, _P, return_indices=True)
    if bool(negative.any()):
        ch = negative.nonzero().flatten()
        q, qidx = F.max_pool2d(y.index_select(1, ch).neg_(), _K, _S, _P, return_indices=True)
        p.index_copy_(1, ch, q.neg_())
        idx.index_copy_(1, ch, qidx)
    return p, idx


def _moments(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of an N x C x H x W map, as E[y^2] - E[y]^2 from
    two sums; the squares are formed a piece at a time in one small reused buffer.
    (``torch.var_mean`` over these dimensions is an order of magnitude slower on the CPU.)"""
    c = y.shape[1]
    m = y.numel() // c
    dims: int | tuple[int, ...]
    if y.is_contiguous(memory_format=torch.channels_last):
        rows, dims = y.permute(0, 2, 3, 1).reshape(-1, c), 0  # (N H W) x C, no copy
        k = max(1, (1 << 19) // c)  # about 2 MiB of squares at a time
    else:
        rows, dims = y, (0, 2, 3)
        k = max(1, (1 << 19) // y[0].numel())
    mean = rows.sum(dim=dims) / m
    buf = torch.empty_like(rows[:k])
    sq = torch.zeros_like(mean)
    for chunk in rows.split(k):
        sq += torch.mul(chunk, chunk, out=buf[: chunk.shape[0]]).sum(dim=dims)
    return mean, (sq / m - mean * mean).clamp_(min=0)


class _StemPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, gamma, beta, running: tuple[Tensor | None, Tensor | None, float, float]):
        running_mean, running_var, momentum, eps = running  # buffers and numbers: no gradient
        c = y.shape[1]
        m = y.numel() // c
        mean, var = _moments(y)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * (m / max(m - 1, 1)), alpha=momentum)
        invstd = torch.rsqrt(var + eps)
        a = gamma * invstd
        b = beta - mean * a
        p, idx = _pool_signed(y, a < 0)
        out = torch.addcmul(b.view(1, -1, 1, 1), p, a.view(1, -1, 1, 1)).relu_()
        ctx.save_for_backward(*(y, idx, p, out, a, mean, invstd))
        ctx.m = m
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        y, idx, p, out, a, mean, invstd = ctx.saved_tensors
        shape = (1, -1, 1, 1)
        # gradient w.r.t. the normalised map at the pooled positions (zero where ReLU clipped);
        # p holds the values of y there
        g = grad_out * (out > 0)
        s1 = g.sum(dim=(0, 2, 3))  # sum of the gradient w.r.t. z over the full map
        s2 = (g * (p - mean.view(shape))).sum(dim=(0, 2, 3))  # ... times (y - mean)
        grad_gamma = s2 * invstd
        grad_beta = s1
        grad_y = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.ops.aten.max_pool2d_with_indices_backward(
                g * a.view(shape),
                y,
                kernel_size=[_K, _K],
                stride=[_S, _S],
                padding=[_P, _P],
                dilation=[1, 1],
                ceil_mode=False,
                indices=idx,
            )
            c1 = -a * invstd * invstd * s2 / ctx.m
            c0 = -a * s1 / ctx.m - c1 * mean
            grad_y.add_(c0.view(shape)).addcmul_(y, c1.view(shape))
        return grad_y, grad_gamma, grad_beta, None


def fused_stem_applies(y: Tensor, bn: nn.Module, pool: nn.Module) -> bool:
    """Whether ``stem_bn_relu_pool`` stands in for ``pool(relu(bn(y)))``: CPU fp32 training
    with grad, a plain BatchNorm2d with affine parameters and a float momentum, a 3 x 3 stride 2
    padding 1 max-pool."""
    return (
        y.device.type == "cpu"
        and y.dtype == torch.float32
        and y.dim() == 4
        and torch.is_grad_enabled()
        and type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and not bool((bn.weight == 0).any())  # a = 0: no pooled position to route through
        and isinstance(bn.momentum, float)
        and type(pool) is nn.MaxPool2d
        and (pool.kernel_size, pool.stride, pool.padding)
        in ((_K, _S, _P), ((_K, _K), (_S, _S), (_P, _P)))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
        and not pool.return_indices
        and y.numel() > y.shape[1]
    )


def stem_bn_relu_pool(y: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``maxpool3x3s2(relu(bn(y)))`` for a BatchNorm2d in training mode, computed from the
    statistics and the pool of ``y`` (see the module docstring); updates the running statistics
    and ``num_batches_tracked`` as the module would."""
    track = bn.track_running_stats and bn.running_mean is not None
    if track and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return _StemPool.apply(
        y,
        bn.weight,
        bn.bias,
        (
            bn.running_mean if track else None,
            bn.running_var if track else None,
            bn.momentum,
            bn.eps,
        ),
    )
