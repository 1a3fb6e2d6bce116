"""Semi-supervised fine-tuning with 1 % or 10 % of the labels (reference protocol): the whole
network is trained on a class-balanced labelled subset, with separate learning rates for the
trunk and the new linear head, a step schedule (x0.2 at 60 % and 80 % of training: epochs 12
and 16 of 20) and no weight decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from swav.data.images import DataError, ImageSource
from swav.data.transforms import EvalTransform, TrainTransform
from swav.errors import UsageError
from swav.eval.linear import (
    LinearResult,
    classifier_epoch,
    init_linear,
    n_classes,
    test_accuracy,
)
from swav.model.features import ImageDataset


def balanced_subset(
    labels: Sequence[int] | np.ndarray | Tensor, fraction: float, seed: int = 0
) -> list[int]:
    """Indices holding ``round(fraction x n_c)`` (at least 1) images of every class c."""
    if not 0 < fraction <= 1:
        raise UsageError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        n = max(1, int(round(fraction * len(idx))))
        chosen += idx[torch.randperm(len(idx), generator=g)[:n]].tolist()
    return sorted(chosen)


def subset_from_file(names: Sequence[str], path: str | Path) -> list[int]:
    """Indices of the images listed (one file name or relative path per line) in ``path``."""
    wanted = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    index = {n: i for i, n in enumerate(names)}
    base = {Path(n).name: i for i, n in enumerate(names)}
    missing = [w for w in wanted if w not in index and Path(w).name not in base]
    if missing:
        raise DataError(f"{len(missing)} listed images are not in the data, e.g. {missing[0]}")
    return sorted(index[w] if w in index else base[Path(w).name] for w in wanted)


def finetune(
    model: nn.Module,
    train_source: ImageSource,
    test_source: ImageSource,
    indices: list[int],
    transform: EvalTransform,
    epochs: int = 20,
    batch_size: int = 256,
    trunk_lr: float = 0.01,
    head_lr: float = 0.2,
    milestones: tuple[float, float] = (0.6, 0.8),
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> LinearResult:
    """Fine-tune backbone + new linear head on ``train_source[indices]`` (``TrainTransform``
    crops at the size of ``transform``); top-1/5 on the test source through ``transform``."""
    torch.manual_seed(seed)
    trunk: Any = model.backbone if hasattr(model, "backbone") else model
    trunk = trunk.to(device)
    head = init_linear(int(trunk.num_features), n_classes(train_source, test_source), seed)
    head = head.to(device)
    opt = torch.optim.SGD(
        [
            {"params": trunk.parameters(), "lr": trunk_lr},
            {"params": head.parameters(), "lr": head_lr},
        ],
        momentum=0.9,
        weight_decay=0.0,
    )
    steps = [int(math.floor(m * epochs)) for m in milestones]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=0.2)
    g = torch.Generator().manual_seed(seed)
    data = Subset(ImageDataset(train_source, TrainTransform(transform), transform.size), indices)
    loader = DataLoader(
        data,
        batch_size=min(batch_size, len(indices)),
        shuffle=True,
        generator=g,
        drop_last=len(indices) > batch_size,
    )
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="fine-tuning", unit="epoch")
    for _ in epoch_iter:
        trunk.train()
        classifier_epoch(loader, lambda x: head(trunk(x)), opt, device, min_batch=2)
        sched.step()
    trunk.eval()
    top1, top5 = test_accuracy(lambda x: head(trunk(x)), test_source, transform, batch_size, device)
    return LinearResult(top1, top5, None, epochs, float("nan"))
