"""The photometric part of multi-crop as tensor operations: colour jitter (brightness, contrast,
saturation, hue), grayscale and Gaussian blur on float images in [0, 1], per crop in place (for
the per-image pipeline) or batched with one parameter per image (for ``MultiCrop.batch``), and
the same jitter with Pillow's operations for the ``pil`` backend."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import Tensor


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_axis(x: Tensor, kernel: Tensor, radius: int, dim: int) -> Tensor:
    """Symmetric 1-D convolution along ``dim`` (-1 or -2) with reflect padding, as a sum of
    shifted copies: for a kernel of a few taps on a cached crop this beats a convolution call."""
    size = x.shape[dim]
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    xp = F.pad(x.unsqueeze(0), pad, mode="reflect").squeeze(0)
    k = kernel.tolist()
    centre = len(k) // 2
    out = xp.narrow(dim, radius, size) * k[centre]
    for d in range(1, radius + 1):
        pair = xp.narrow(dim, radius + d, size) + xp.narrow(dim, radius - d, size)
        out.add_(pair, alpha=k[centre + d])
    return out


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a float C x H x W image, kernel radius ceil(3 sigma),
    reflect padding (like PIL's GaussianBlur(radius=sigma)); on images smaller than the kernel
    the kernel is cut to the image and renormalised."""
    h, w = img.shape[-2:]
    x = img
    for dim, size in ((-1, w), (-2, h)):
        k = _cut_kernel(sigma, size)
        if k.numel() > 1:
            x = _blur_axis(x, k, k.numel() // 2, dim)
    return x


def to_gray(x: Tensor) -> Tensor:
    """Luma as torchvision's rgb_to_grayscale: ... x 3 x H x W -> ... x 1 x H x W."""
    return (
        (x.narrow(-3, 0, 1) * 0.2989)
        .add_(x.narrow(-3, 1, 1), alpha=0.587)
        .add_(x.narrow(-3, 2, 1), alpha=0.114)
    )


def adjust_hue(x: Tensor, shift: float | Tensor) -> Tensor:
    """Exact HSV hue rotation of float images in [0, 1] (... x 3 x H x W) by ``shift`` turns
    (a float, or one value per image of the batch dimensions).

    Computes hue from the max / min channels, shifts it, and rebuilds RGB with the closed form
    ``c_k = V - C * clamp(2 - |t_k - 2|, 0, 1)``, ``t_k = (n_k + 6h) mod 6``, n = (5, 3, 1),
    which equals the usual RGB -> HSV -> RGB round trip without building the HSV image.
    """
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    inv = torch.where(c > 0, c.reciprocal(), 0.0)  # grey pixels: any hue, C = 0 cancels it
    h = torch.where(
        v == r, (g - b) * inv, torch.where(v == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )  # hue in sixths of a turn, in [-1, 5]
    if isinstance(shift, Tensor):
        shift = shift.to(x.device).reshape(shift.shape + (1,) * (h.dim() - shift.dim()))
    # (h + 6 shift) mod 6, from a positive argument (shift >= -1/2)
    h6 = torch.frac((h + 6.0 * shift + 12.0) * (1.0 / 6.0)).mul_(6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(3, 1, 1)
    t = h6.unsqueeze(-3) + n  # in [1, 11): the wrap at 6 is the second distance below
    k = torch.minimum((t - 2.0).abs_(), (t - 8.0).abs_()).neg_().add_(2.0).clamp_(0.0, 1.0)
    return k.mul_(c.unsqueeze(-3).neg()).add_(v.unsqueeze(-3))


def jitter_op(x: Tensor, op: int, f: float | Tensor) -> Tensor:
    """One ColorJitter operation (0 brightness, 1 contrast, 2 saturation, 3 hue) on float
    images in [0, 1] (... x 3 x H x W, modified in place where possible) with factor ``f``: a
    float, or a tensor of one factor per image of an n x 3 x H x W batch."""
    if op == 3:
        return adjust_hue(x, f)
    if isinstance(f, Tensor):
        f = f.view(-1, 1, 1, 1)
    if op == 0:
        return x.mul_(f).clamp_(0.0, 1.0)
    if op == 1:
        mean = to_gray(x).mean(dim=(-3, -2, -1), keepdim=True)
        return x.mul_(f).add_(mean * (1.0 - f)).clamp_(0.0, 1.0)
    grey = to_gray(x).mul_(1.0 - f)
    return x.mul_(f).add_(grey).clamp_(0.0, 1.0)


def color_jitter(x: Tensor, factors: list[float], order: list[int], active: list[bool]) -> Tensor:
    """ColorJitter on one float crop in [0, 1] (3 x H x W, modified in place where possible):
    brightness, contrast, saturation and hue with the given factors, in the given order, each
    clamped to [0, 1] as torchvision does."""
    for op in order:
        if active[op]:
            x = jitter_op(x, op, factors[op])
    return x


def _cut_kernel(sigma: float, size: int) -> Tensor:
    """The blur kernel of ``sigma`` cut to a map of ``size`` pixels and renormalised."""
    k = _gaussian_kernel(sigma)
    r = k.numel() // 2
    rr = min(r, size - 1)
    k = k[r - rr : r + rr + 1]
    return k / k.sum()


def gaussian_blur_batch(x: Tensor, sigmas: Sequence[float]) -> Tensor:
    """``gaussian_blur`` of each image of an n x C x H x W float batch with its own sigma, as two
    depthwise convolutions (kernels zero-padded to the largest radius, reflect padding)."""
    n, c, h, w = x.shape
    for dim, size in ((-1, w), (-2, h)):
        kernels = [_cut_kernel(s, size) for s in sigmas]
        radius = max(k.numel() // 2 for k in kernels)
        if radius == 0:
            continue
        weight = torch.zeros(n, 2 * radius + 1)
        for row, k in zip(weight, kernels):
            r = k.numel() // 2
            row[radius - r : radius + r + 1] = k
        weight = weight.repeat_interleave(c, 0).to(x.device, non_blocking=True)
        flat = x.reshape(1, n * c, h, w)
        if dim == -1:
            flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
            weight = weight.view(n * c, 1, 1, -1)
        else:
            flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
            weight = weight.view(n * c, 1, -1, 1)
        x = F.conv2d(flat, weight.to(x.dtype), groups=n * c).view(n, c, h, w)
    return x


def _on_rows(x: Tensor, rows: list[int], fn) -> Tensor:
    """x[rows] = fn(x[rows]) (fn may work in place); every row: fn(x) itself."""
    if not rows:
        return x
    if len(rows) == x.shape[0]:
        return fn(x)
    idx = torch.tensor(rows, dtype=torch.long).to(x.device, non_blocking=True)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def photometric_batch(x: Tensor, steps: Sequence[dict], active: list[bool]) -> Tensor:
    """The photometric steps of ``MultiCrop`` (flip, colour jitter in each crop's own order,
    grayscale, blur), one dict per crop as ``MultiCrop._draw_group`` gives them, applied to an
    n x 3 x H x W float batch in [0, 1] with a few batched operations per step: crops that take
    the same operation at the same position of their jitter order go together."""
    x = _on_rows(x, [i for i, s in enumerate(steps) if s["flip"]], lambda t: t.flip(-1))
    jittered = [(i, s["jitter"]) for i, s in enumerate(steps) if s["jitter"] is not None]
    for position in range(4):
        for op in range(4):
            picked = [(i, f[op]) for i, (f, order) in jittered if order[position] == op]
            if not active[op] or not picked:
                continue
            f = torch.tensor([v for _, v in picked]).to(x.device, non_blocking=True)
            x = _on_rows(x, [i for i, _ in picked], lambda t, op=op, f=f: jitter_op(t, op, f))
    grays = [i for i, s in enumerate(steps) if s["gray"]]
    x = _on_rows(x, grays, lambda t: to_gray(t).expand(-1, 3, -1, -1).contiguous())
    blurred = [(i, s["sigma"]) for i, s in enumerate(steps) if s["sigma"] is not None]
    sigmas = [s for _, s in blurred]
    return _on_rows(x, [i for i, _ in blurred], lambda t: gaussian_blur_batch(t, sigmas))


def jitter_pil(
    im: Image.Image, factors: list[float], order: list[int], active: list[bool]
) -> Image.Image:
    """ColorJitter on a PIL image with given factors and order (Pillow's enhancers, and the hue
    rotation in HSV space with uint8 wrap-around, as torchvision does for PIL images)."""
    for op in order:
        if not active[op]:
            continue
        f = factors[op]
        if op == 0:
            im = ImageEnhance.Brightness(im).enhance(f)
        elif op == 1:
            im = ImageEnhance.Contrast(im).enhance(f)
        elif op == 2:
            im = ImageEnhance.Color(im).enhance(f)
        else:
            h, s, v = im.convert("HSV").split()
            shifted = np.asarray(h, dtype=np.uint8) + np.uint8(int(f * 255) % 256)
            im = Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")
    return im
