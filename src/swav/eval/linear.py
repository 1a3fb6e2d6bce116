"""Linear evaluation of frozen features (the reference protocol, Sec. 3 of REFERENCE.md).

Two modes:
- ``linear_probe_features``: the fast mode, a linear layer trained on cached features without
  augmentation (for quick probing and per-stage probes);
- ``linear_eval``: the protocol itself: the frozen backbone in eval mode, features recomputed on
  augmented images each epoch (RandomResizedCrop + flip), Resize + CenterCrop for evaluation.

Both: Linear initialised N(0, 0.01), bias 0; SGD momentum 0.9, lr 0.3 x batch / 256, weight
decay 1e-6, cosine schedule; the number of classes comes from the labels; the *last* epoch is
reported. Model selection, when wanted, uses a validation split carved from the training set
(never the test split).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from swav.data.images import ImageSource
from swav.data.transforms import EvalTransform, TrainTransform
from swav.model.features import ImageDataset, image_loader


@dataclass
class LinearResult:
    top1: float
    top5: float
    val_top1: float | None
    epochs: int
    train_top1: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def init_linear(dim: int, n_classes: int, seed: int) -> nn.Linear:
    """A linear classifier initialised N(0, 0.01), bias 0 (the reference protocol)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, n_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_classes, dim, generator=g) * 0.01)
        lin.bias.zero_()
    return lin


def accuracy(logits: Tensor, y: Tensor) -> tuple[float, float]:
    """(top-1, top-5) accuracy in %."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    y = y.view(-1, 1)
    return 100.0 * float((top[:, :1] == y).any(1).float().mean()), 100.0 * float(
        (top == y).any(1).float().mean()
    )


def carve_validation(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): ``fraction`` of each class held out."""
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(fraction * len(idx)))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def linear_probe_features(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float = 1e-6,
    val_fraction: float = 0.0,
    standardize: bool = True,
    seed: int = 0,
) -> LinearResult:
    """Fast linear probe on precomputed features (no augmentation)."""
    train_x, test_x = train_x.float(), test_x.float()
    train_y, test_y = train_y.long(), test_y.long()
    val = None
    if val_fraction > 0:
        tr_idx, va_idx = carve_validation(train_y, val_fraction, seed)
        val = (train_x[va_idx], train_y[va_idx])
        train_x, train_y = train_x[tr_idx], train_y[tr_idx]
    if standardize:  # a BatchNorm without affine parameters, fixed from the training features
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
        if val is not None:
            val = ((val[0] - mean) / std, val[1])
    n_classes = int(max(int(train_y.max()), int(test_y.max())) + 1)
    head = init_linear(train_x.shape[1], n_classes, seed)
    lr = 0.3 * batch_size / 256 if lr is None else lr
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_y) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train_y), generator=g)
        for s in range(0, len(perm), batch_size):
            b = perm[s : s + batch_size]
            loss = F.cross_entropy(head(train_x[b]), train_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        top1, top5 = accuracy(head(test_x), test_y)
        train_top1 = accuracy(head(train_x), train_y)[0]
        val_top1 = accuracy(head(val[0]), val[1])[0] if val is not None else None
    return LinearResult(top1, top5, val_top1, epochs, train_top1)


def linear_eval(
    model: nn.Module,
    train_source: ImageSource,
    test_source: ImageSource,
    transform: EvalTransform,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float = 1e-6,
    device: str = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> LinearResult:
    """The reference protocol with augmentation, on a frozen backbone in eval mode: trained on
    ``TrainTransform`` crops at the size of ``transform``, tested through ``transform``."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    trunk: Any = model.forward_backbone if hasattr(model, "forward_backbone") else model
    size = transform.size
    with torch.no_grad():
        dim = trunk(torch.zeros(2, 3, size, size, device=device)).shape[1]
    head = init_linear(dim, n_classes(train_source, test_source), seed).to(device)
    lr = 0.3 * batch_size / 256 if lr is None else lr
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        ImageDataset(train_source, TrainTransform(transform), size),
        batch_size=batch_size,
        shuffle=True,
        generator=g,
        num_workers=workers,
        drop_last=False,
    )
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="linear", unit="epoch")
    torch.manual_seed(seed)

    def logits(x: Tensor) -> Tensor:
        with torch.no_grad():
            f = trunk(x)
        return head(f)

    for _ in epoch_iter:
        classifier_epoch(loader, logits, opt, device)
        sched.step()
    top1, top5 = test_accuracy(lambda x: head(trunk(x)), test_source, transform, batch_size, device)
    return LinearResult(top1, top5, None, epochs, float("nan"))


def classifier_epoch(
    loader: DataLoader,
    logits: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    min_batch: int = 1,
) -> None:
    """One epoch of cross-entropy training on the readable images of ``loader``'s
    ``(image, label, index, readable)`` batches; batches with fewer than ``min_batch`` readable
    images are skipped."""
    for x, y, _, ok in loader:
        x, y = x[ok].to(device), y[ok].to(device)
        if len(y) < min_batch:
            continue
        loss = F.cross_entropy(logits(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def n_classes(train_source: ImageSource, test_source: ImageSource) -> int:
    """Classes of a labelled train/test pair (from the largest label of either)."""
    return int(max(max(train_source.labels), max(test_source.labels)) + 1)


@torch.no_grad()
def test_accuracy(
    classify: Callable[[Tensor], Tensor],
    source: ImageSource,
    transform: EvalTransform,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(top-1, top-5) % of ``classify`` (images -> logits) on the readable images of
    ``source`` through ``transform``."""
    logits, ys = [], []
    for x, y, _, ok in image_loader(source, transform, transform.size, batch_size):
        logits.append(classify(x[ok].to(device)).cpu())
        ys.append(y[ok])
    return accuracy(torch.cat(logits), torch.cat(ys))
