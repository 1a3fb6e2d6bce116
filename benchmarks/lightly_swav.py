"""lightly's SwAV, trained on the same network, crops, batches and number of steps as ours.

The hyper-parameters are those of lightly's ImageNet benchmark script
(``benchmarks/imagenet/resnet50/swav.py`` in lightly's repository): ``SwaVProjectionHead()``
(2048 -> 2048 -> 128), ``SwaVPrototypes(n_steps_frozen_prototypes=1)`` (3000 prototypes,
frozen during the first epoch), ``SwaVLoss()`` (temperature 0.1, epsilon 0.05, 3 iterations),
lightly's LARS at 0.6 x batch / 256 with momentum 0.9 and weight decay 1e-6 (none on biases and
norms), cosine to 0.0006 x batch / 256 after a linear warm-up of 10 of its 100 epochs, and a
queue of 15 batches per large crop from epoch 15 of 100. The warm-up and the queue start are
the same shares of this shorter run. Only the budget changes.

The trunk is this project's ResNet module, so both sides train the same network with the same
convolution code and the comparison is of the methods, not of two implementations of ResNet.
The batches come from this project's loader (same images, crops and order); the backbone runs
under the same autocast and memory format (channels-last when ``train.channels_last``) as ours,
and lightly's loss gets its inputs in fp32.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from swav.config import Config
from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
from swav.data.multicrop import MultiCrop
from swav.data.sources import training_source
from swav.engine.runtime import resolve_precision, thread_budget
from swav.model.backbones import build_backbone
from swav.model.swav import SwAVOutput


class LightlySwAV(nn.Module):
    """This project's ResNet trunk (the same network as ours: torchvision's architecture and
    initialisation, the small-image stem when ours has it) with lightly's head and prototypes;
    ``forward_backbone`` / ``forward_head`` let the same evaluation read it."""

    def __init__(self, arch: str, small_stem: bool) -> None:
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__()
        self.backbone = build_backbone(arch, small_stem=small_stem)
        dim = self.backbone.num_features
        self.projection_head = SwaVProjectionHead(dim, 2048, 128)
        self.prototypes = SwaVPrototypes(128, 3000, n_steps_frozen_prototypes=1)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def project(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection_head(f), dim=1)

    def forward_head(self, f: torch.Tensor) -> SwAVOutput:
        z = self.project(f)
        return SwAVOutput(z, [self.prototypes(z, step=1 << 30)])  # evaluation: not frozen


def _optimizer(model: LightlySwAV, batch: int) -> torch.optim.Optimizer:
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.utils.lars import LARS

    params, no_decay = get_weight_decay_parameters(
        [model.backbone, model.projection_head, model.prototypes]
    )
    return LARS(
        [{"params": params}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.6 * batch / 256,
        momentum=0.9,
        weight_decay=1e-6,
    )


def _lr(step: int, total: int, warmup: int, base: float, end: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return end + 0.5 * (base - end) * (1 + math.cos(math.pi * t))


def run_lightly(
    cfg: Config,
    args: argparse.Namespace,
    evaluate: Callable[..., dict],
    epochs: int | None = None,
) -> dict[str, Any]:
    """lightly's SwAV for ``epochs`` (default: the configuration's), measured every
    ``--eval-every`` epochs as ours; ``train_seconds`` excludes the measurements."""
    from lightly.loss import SwaVLoss
    from lightly.loss.memory_bank import MemoryBankModule

    torch.manual_seed(cfg.train.seed)
    model = LightlySwAV(cfg.model.arch, cfg.model.small_stem)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    source = training_source(cfg.data, cfg.train.seed)
    bs, epochs = cfg.train.batch_size, epochs or cfg.train.epochs
    sampler = EpochSampler(len(source), bs, cfg.train.seed, 0, 1, cfg.train.iters_per_epoch)
    dataset = MultiCropDataset(source, MultiCrop(cfg.multicrop))
    budget = thread_budget(cfg.train.threads, cfg.data.workers, torch.device("cpu"))
    torch.set_num_threads(budget.threads)  # the same split of the cores as ours
    loader = make_loader(dataset, sampler, bs, budget.workers)
    iters, n_large = sampler.batches, cfg.multicrop.n_crops[0]
    total, warmup = epochs * iters, int(0.1 * epochs * iters)
    queue_from, queue_batches = int(0.15 * epochs), 15
    queues = nn.ModuleList(
        [MemoryBankModule(size=(queue_batches * bs, 128)) for _ in range(n_large)]
    )
    criterion, opt = SwaVLoss(), _optimizer(model, bs)
    dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))
    curve, losses, t0, step = [], [], time.time(), 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        for batch_idx, (crops, _, _, _) in enumerate(loader):
            for g in opt.param_groups:
                g["lr"] = _lr(step, total, warmup, 0.6 * bs / 256, 0.0006 * bs / 256)
            model.prototypes.normalize()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                feats = [model.forward_backbone(c.contiguous(memory_format=fmt)) for c in crops]
            projs = [model.project(f.float()) for f in feats]
            queue_logits = None
            if epoch >= queue_from:
                with torch.no_grad():
                    stored = [
                        q(p, update=True)[1].permute(1, 0) for q, p in zip(queues, projs[:n_large])
                    ]
                if batch_idx > queue_batches:
                    queue_logits = [model.prototypes(p, step=epoch) for p in stored]
            logits = [model.prototypes(p, step=epoch) for p in projs]
            loss = criterion(logits[:n_large], logits[n_large:], queue_logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append((step, epoch + 1, float(loss.detach())))
            step += 1
        final = epoch + 1 == epochs
        if (epoch + 1) % max(1, args.eval_every) and not final:
            continue  # measured at the same epochs as ours
        row = {"epoch": epoch + 1, "train_seconds": round(time.time() - t0, 1)}
        row.update(evaluate(model.eval(), cfg, args.eval_limit, args.probe_epochs if final else 0))
        curve.append(row)
        print("lightly", row, flush=True)
        t0 += row["eval_seconds"]
    from quality import loss_health

    return {
        "curve": curve,
        "final": curve[-1],
        "iterations": step,
        "loss": loss_health(losses, math.log(3000), warmup),
    }
