"""Optimisers and schedules: SGD wrapped in LARS (the reference recipe), SGD, AdamW; learning
rate set every iteration from a precomputed array (linear warmup, then cosine)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from swav.errors import UsageError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as in the
    reference recipe (trust coefficient 0.001, no clipping, applied to every parameter).

    For each parameter with weights w and gradient g (both non-zero), the update direction is
    ``eta * |w| / (|g| + wd |w|) * (g + wd w)``, fed to heavy-ball momentum. Parameters in a group
    with ``lars=False`` get plain SGD with weight decay ``weight_decay`` of that group.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=True
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr, mom = group["weight_decay"], group["lr"], group["momentum"]
            if group["lars"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = group["eta"] * w_norm / (g_norm + w_norm * wd + group["eps"])
                ok = (w_norm > 0) & (g_norm > 0)
                # where a norm is zero the gradient is used as is, without weight decay
                scale = torch.where(ok, trust, torch.ones_like(trust))
                decay = torch.where(ok, scale * wd, torch.zeros_like(trust))
                scales, decays = scale.unbind(), decay.unbind()
            else:
                dev = params[0].device
                scales = torch.ones(len(params), device=dev).unbind()
                decays = torch.full((len(params),), float(wd), device=dev).unbind()
            # direction d = scale * g + decay * w, accumulated in place (no temporaries the
            # size of the model): buf = mom * buf + d, then w -= lr * buf
            for p, g, s, dw in zip(params, grads, scales, decays):
                if mom:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.mul(g, s)
                    else:
                        buf.mul_(mom).addcmul_(g, s)
                    buf.addcmul_(p, dw)
                    p.add_(buf, alpha=-lr)
                else:
                    p.mul_(1 - lr * dw).addcmul_(g, s, value=-lr)
        return loss


def _is_bias_or_norm(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    eta: float = 0.001,
    exclude_bias_norm: bool = False,
) -> torch.optim.Optimizer:
    """``lars`` | ``sgd`` | ``adamw``; with ``exclude_bias_norm``, biases and normalisation
    parameters get no weight decay (and, for LARS, no adaptation)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]]
    if exclude_bias_norm:
        regular = [p for n, p in named if not _is_bias_or_norm(n, p)]
        special = [p for n, p in named if _is_bias_or_norm(n, p)]
        groups = [{"params": regular}, {"params": special, "weight_decay": 0.0, "lars": False}]
    else:
        groups = [{"params": [p for _, p in named]}]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    for g in groups:
        g.pop("lars", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer {name!r}: choose lars, sgd or adamw")


def lr_schedule(
    base_lr: float,
    final_lr: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0.0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """One learning rate per iteration: linear from ``start_warmup`` to ``base_lr`` over the
    warmup, then cosine from ``base_lr`` to ``final_lr`` over the remaining iterations."""
    total = epochs * iters_per_epoch
    warm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warmup = np.linspace(start_warmup, base_lr, warm, endpoint=False) if warm else np.zeros(0)
    rest = total - warm
    t = np.arange(rest)
    cosine = final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(math.pi * t / max(rest, 1)))
    return np.concatenate([warmup, cosine])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
