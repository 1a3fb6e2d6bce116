"""BatchNorm with statistics over all processes of a group, on any device.

PyTorch's ``SyncBatchNorm`` runs on GPUs only; ``GlobalBatchNorm`` computes the same thing with
plain collectives (so Gloo on the CPU works too, and 2 processes x B images train like 1 x 2B):
the forward all-reduces each channel's sum, sum of squares and count; the backward all-reduces
the sums of the output gradient and of its product with the normalised input, which gives the
input gradient of the whole group's loss. Parameter gradients stay per process (DDP averages
them, as for every other parameter). Groups of consecutive ranks (``train.sync_bn_group``)
follow the reference implementation's ``syncbn_process_group_size``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from swav.errors import ConfigError


def _shape(t: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector broadcast against N x C x ... ``like``."""
    return t.reshape(1, -1, *([1] * (like.dim() - 2)))


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


class _GlobalBN(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: float,
        group: Any,
    ) -> tuple[Tensor, Tensor, Tensor]:
        xf = x.float()
        dims = _dims(x)
        n_local = xf.numel() // xf.shape[1]
        stats = torch.cat(
            [
                xf.sum(dims),
                (xf * xf).sum(dims),
                torch.tensor([float(n_local)], device=x.device),
            ]
        )
        dist.all_reduce(stats, group=group)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        xhat = (xf - _shape(mean, x)) * _shape(invstd, x)
        y = xhat * _shape(weight.float(), x) + _shape(bias.float(), x)
        ctx.save_for_backward(xhat, weight, invstd, n)
        ctx.group = group  # type: ignore[attr-defined]
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor, _dmean: Tensor, _dvar: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, None, None]:
        xhat, weight, invstd, n = ctx.saved_tensors
        dyf = dy.float()
        dims = _dims(dyf)
        c = dyf.shape[1]
        local = torch.cat([dyf.sum(dims), (dyf * xhat).sum(dims)])
        grad_bias, grad_weight = local[:c].clone(), local[c:].clone()
        dist.all_reduce(local, group=ctx.group)
        mean_dy, mean_dy_xhat = local[:c] / n, local[c:] / n
        dx = (dyf - _shape(mean_dy, dyf) - xhat * _shape(mean_dy_xhat, dyf)) * _shape(
            invstd * weight.float(), dyf
        )
        return dx.to(dy.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer whose training statistics cover every process of ``group`` (any
    dimension: N x C, N x C x H x W, ...). Evaluation uses the running statistics."""

    group: Any = None

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        ready = dist.is_available() and dist.is_initialized()
        if not (self.training and ready and self.affine and self.track_running_stats):
            return super().forward(input)
        assert self.weight is not None and self.bias is not None
        assert self.running_mean is not None and self.running_var is not None
        y, mean, var = _GlobalBN.apply(input, self.weight, self.bias, self.eps, self.group)
        with torch.no_grad():
            n = input.numel() // input.shape[1] * dist.get_world_size(self.group)
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            unbiased = var * n / max(n - 1, 1)
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        return y


def convert_global_bn(module: nn.Module, group: Any = None) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a ``GlobalBatchNorm`` holding the same
    parameters and statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        new.group = group
        # the same parameter and buffer objects: an optimiser built before keeps working
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_global_bn(child, group))
    return module


def bn_group(size: int) -> Any:
    """The process group of consecutive ranks this process belongs to, for groups of ``size``
    (0 or the world size: every process). Every process must call it (a collective)."""
    world = dist.get_world_size()
    if size <= 0 or size >= world:
        return None
    if world % size:
        raise ConfigError(f"train.sync_bn_group={size} does not divide the {world} processes")
    mine = None
    for start in range(0, world, size):
        g = dist.new_group(list(range(start, start + size)))
        if start <= dist.get_rank() < start + size:
            mine = g
    return mine
