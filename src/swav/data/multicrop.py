"""Multi-crop augmentation (SwAV paper, Sec. 3.2 and Appendix A).

Each image gives ``sum(n_crops)`` views: for each resolution group, ``n`` random resized crops of
``size`` px covering a random fraction in ``[min_scale, max_scale]`` of the image, then a
horizontal flip, colour jitter, grayscale, Gaussian blur and normalisation. The main recipe is
2 x 224 px at scale (0.14, 1) plus 6 x 96 px at scale (0.05, 0.14).

The image is decoded and turned into a uint8 tensor once; every crop is taken from that tensor
and resized with antialiasing, and the photometric operations run on the small crop only.
All randomness comes from one ``torch.Generator`` when given (reproducible from a seed), else from
torch's global generator (which DataLoader seeds per worker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.228, 0.224, 0.225)


@dataclass
class MultiCropConfig:
    """Every knob of the multi-crop augmentation, with the paper's defaults.

    n_crops / sizes / min_scale / max_scale are per resolution group (same length).
    jitter is (brightness, contrast, saturation, hue) as in ColorJitter, already multiplied by
    the strength (the paper uses strength 1: 0.8, 0.8, 0.8, 0.2).
    """

    n_crops: list[int] = field(default_factory=lambda: [2, 6])
    """Crops per resolution group: the paper's 2 large + 6 small."""
    sizes: list[int] = field(default_factory=lambda: [224, 96])
    """Crop size in pixels per group."""
    min_scale: list[float] = field(default_factory=lambda: [0.14, 0.05])
    """Smallest fraction of the image area a crop covers, per group."""
    max_scale: list[float] = field(default_factory=lambda: [1.0, 0.14])
    """Largest fraction of the image area a crop covers, per group."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip."""
    jitter: list[float] = field(default_factory=lambda: [0.8, 0.8, 0.8, 0.2])
    """Colour jitter (brightness, contrast, saturation, hue) ranges, strength included."""
    jitter_prob: float = 0.8
    """Probability of applying the colour jitter (in random order of its four parts)."""
    grayscale_prob: float = 0.2
    """Probability of converting a crop to greyscale."""
    blur_prob: float = 0.5
    """Probability of a Gaussian blur (on every crop, as the reference implementation)."""
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    """Range of the blur's sigma in pixels of the crop, drawn uniformly."""
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    """Per-channel mean subtracted after augmentation."""
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    """Per-channel standard deviation divided by after augmentation."""
    backend: str = "pil"
    """Photometric operations: 'pil' (Pillow on uint8 crops, as the reference implementation;
    fastest on a CPU) or 'tensor' (batched torch ops, usable on a GPU via MultiCrop.on_device)."""

    def validate(self) -> None:
        groups = len(self.n_crops)
        for name in ("sizes", "min_scale", "max_scale"):
            if len(getattr(self, name)) != groups:
                raise ValueError(
                    f"multicrop.{name} has {len(getattr(self, name))} entries but "
                    f"multicrop.n_crops has {groups}: give one value per resolution group"
                )
        for n, s, lo, hi in zip(self.n_crops, self.sizes, self.min_scale, self.max_scale):
            if n < 1 or s < 1:
                raise ValueError(f"multicrop: crop counts and sizes must be >= 1, got {n}, {s}")
            if not 0 < lo <= hi <= 1:
                raise ValueError(
                    f"multicrop: scale bounds must satisfy 0 < min_scale <= max_scale <= 1, "
                    f"got ({lo}, {hi})"
                )
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"multicrop.{name} must be in [0, 1], got {p}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(
                "multicrop.jitter must be [brightness, contrast, saturation, hue] >= 0, hue <= 0.5"
            )
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError("multicrop.blur_sigma must be [min, max] with 0 < min <= max")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("multicrop.mean and multicrop.std need 3 values, std > 0")
        if self.backend not in ("pil", "tensor"):
            raise ValueError(f"multicrop.backend must be 'pil' or 'tensor', got {self.backend!r}")

    @property
    def total_crops(self) -> int:
        return sum(self.n_crops)


def to_uint8_tensor(img: Image.Image | np.ndarray | Tensor) -> Tensor:
    """3 x H x W uint8 tensor from a PIL image (any mode), an H x W (x C) array or a tensor."""
    if isinstance(img, Tensor):
        t = img
    else:
        if isinstance(img, Image.Image):
            img = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
        t = torch.from_numpy(np.array(img, copy=True))
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    # an H x W x C array seen as 3 x H x W (channels-last memory): the uint8 antialiased
    # resize has a fast path for this layout
    return t


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area fraction in ``scale``, aspect ratio
    log-uniform in ``ratio`` (the RandomResizedCrop distribution; 10 tries, then a centre crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a float C x H x W image, kernel radius ceil(3 sigma),
    reflect padding (like PIL's GaussianBlur(radius=sigma))."""
    k = _gaussian_kernel(sigma)
    r = k.numel() // 2
    c, h, w = img.shape
    r_h, r_w = min(r, h - 1), min(r, w - 1)
    x = img.unsqueeze(1)  # C x 1 x H x W
    if r_w > 0:
        kw = k[r - r_w : r + r_w + 1]
        kw = kw / kw.sum()
        x = F.conv2d(F.pad(x, (r_w, r_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1))
    if r_h > 0:
        kh = k[r - r_h : r + r_h + 1]
        kh = kh / kh.sum()
        x = F.conv2d(F.pad(x, (0, 0, r_h, r_h), mode="reflect"), kh.view(1, 1, -1, 1))
    return x.squeeze(1)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale: N x 3 x H x W -> N x 1 x H x W."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Exact HSV hue rotation of float images in [0, 1] (N x 3 x H x W) by ``shift`` (N,) turns.

    Computes hue from the max / min channels, shifts it, and rebuilds RGB with the closed form
    ``c_k = V - C * clamp(min(t_k, 4 - t_k), 0, 1)``, ``t_k = (n_k + 6h) mod 6``, n = (5, 3, 1),
    which equals the usual RGB -> HSV -> RGB round trip without building the HSV image.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(dim=1)
    m, _ = x.min(dim=1)
    c = v - m
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(
        v == r, (g - b) / safe, torch.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = torch.where(c > 0, h, torch.zeros_like(h))
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0)  # hue in sixths of a turn
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    t = torch.remainder(n + h6.unsqueeze(1), 6.0)
    k = torch.minimum(t, 4.0 - t).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - c.unsqueeze(1) * k


def _blur_batch(x: Tensor, sigmas: list[float]) -> Tensor:
    """Gaussian blur with one sigma per image (N x 3 x H x W), as ``gaussian_blur`` per image:
    every kernel is zero-padded to the largest radius, so one grouped convolution does all."""
    n, ch, h, w = x.shape
    kernels = [_gaussian_kernel(s) for s in sigmas]
    r = max(k.numel() // 2 for k in kernels)
    r_h, r_w = min(r, h - 1), min(r, w - 1)
    if r_h < r or r_w < r:  # images smaller than the kernel: the per-image path trims it
        return torch.stack([gaussian_blur(img, s) for img, s in zip(x, sigmas)])
    bank = torch.zeros(n, 2 * r + 1)
    for i, k in enumerate(kernels):
        kr = k.numel() // 2
        bank[i, r - kr : r + kr + 1] = k
    weight = bank.repeat_interleave(ch, dim=0).to(x.device)  # (n * ch) x (2r + 1)
    y = x.reshape(1, n * ch, h, w)
    y = F.conv2d(
        F.pad(y, (r, r, 0, 0), mode="reflect"), weight.view(n * ch, 1, 1, -1), groups=n * ch
    )
    y = F.conv2d(
        F.pad(y, (0, 0, r, r), mode="reflect"), weight.view(n * ch, 1, -1, 1), groups=n * ch
    )
    return y.view(n, ch, h, w)


class MultiCrop:
    """Callable turning one image into a list of crops ordered by resolution group.

    ``MultiCrop(cfg)(img)`` returns ``sum(cfg.n_crops)`` float tensors (3 x size x size),
    normalised; ``groups`` tells how many crops of each size. The crops of a group are augmented
    together as one batch (each with its own random parameters), which removes most of the
    per-operation overhead of small crops.
    """

    def __init__(
        self,
        config: MultiCropConfig | None = None,
        device: str | torch.device | None = None,
        **overrides,
    ) -> None:
        """``device``: run the crops and the photometric work there (e.g. ``"cuda"``, for when
        the CPU cannot keep up); it implies the batched tensor backend."""
        config = config or MultiCropConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"unknown multi-crop parameter {k!r}")
            setattr(config, k, v)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            config.backend = "tensor"
        config.validate()
        self.config = config
        self._mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)

    @property
    def groups(self) -> list[tuple[int, int]]:
        """(count, size) per resolution group."""
        return list(zip(self.config.n_crops, self.config.sizes))

    def __call__(
        self, img: Image.Image | np.ndarray | Tensor, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        src = to_uint8_tensor(img)
        if self.device is not None:
            src = src.to(self.device, non_blocking=True)
        cfg = self.config
        crops: list[Tensor] = []
        for n, size, lo, hi in zip(cfg.n_crops, cfg.sizes, cfg.min_scale, cfg.max_scale):
            crops += list(self.augment_group(src, n, size, (lo, hi), generator).unbind(0))
        return crops

    def augment_group(
        self,
        src: Tensor,
        n: int,
        size: int,
        scale: Sequence[float],
        generator: torch.Generator | None,
    ) -> Tensor:
        """``n`` crops of ``size`` px from a 3 x H x W uint8 image, as an n x 3 x size x size
        float batch, each crop with its own random box and photometric parameters."""
        cfg = self.config
        height, width = src.shape[1], src.shape[2]
        batch = []
        for _ in range(n):
            top, left, h, w = sample_crop_box(height, width, tuple(scale), generator=generator)
            batch.append(TF.resized_crop(src, top, left, h, w, [size, size], antialias=True))
        u = torch.rand(n, 5, generator=generator)
        if cfg.backend == "pil":
            return self._photometric_pil(batch, u, generator)
        x = torch.stack(batch).float().div_(255.0)
        flip = (u[:, 0] < cfg.flip_prob).nonzero().flatten()
        if len(flip):
            x[flip] = x[flip].flip(-1)
        jitter = (u[:, 1] < cfg.jitter_prob).nonzero().flatten()
        if len(jitter):
            x[jitter] = self._color_jitter(x[jitter], generator)
        gray = (u[:, 2] < cfg.grayscale_prob).nonzero().flatten()
        if len(gray):
            x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
        blur = (u[:, 3] < cfg.blur_prob).nonzero().flatten()
        if len(blur):
            lo, hi = cfg.blur_sigma
            sigmas = (lo + (hi - lo) * u[blur, 4]).tolist()
            x[blur] = _blur_batch(x[blur], sigmas)
        return x.sub_(self._mean).div_(self._std)

    def _photometric_pil(
        self, batch: list[Tensor], u: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """Flip, jitter, grayscale and blur with Pillow on each uint8 crop (the operations and
        parameter distributions of the tensor path), then one batched normalisation."""
        cfg = self.config
        out = []
        jit = (u[:, 1] < cfg.jitter_prob).tolist()
        n_jit = sum(jit)
        if n_jit:
            factors, order = self._jitter_params(n_jit, generator)
        j = 0
        for i, crop in enumerate(batch):
            im = Image.fromarray(crop.permute(1, 2, 0).numpy())
            if u[i, 0] < cfg.flip_prob:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if jit[i]:
                im = _jitter_pil(im, factors[j].tolist(), order[j].tolist(), self._active)
                j += 1
            if u[i, 2] < cfg.grayscale_prob:
                im = im.convert("L").convert("RGB")
            if u[i, 3] < cfg.blur_prob:
                lo, hi = cfg.blur_sigma
                im = im.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * float(u[i, 4])))
            out.append(np.asarray(im))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
        return x.mul_(1.0 / 255.0).sub_(self._mean).div_(self._std)

    def augment(
        self, src: Tensor, size: int, scale: Sequence[float], generator: torch.Generator | None
    ) -> Tensor:
        """One crop of ``size`` px from a 3 x H x W uint8 tensor."""
        return self.augment_group(src, 1, size, scale, generator)[0]

    @property
    def _active(self) -> list[bool]:
        return [v > 0 for v in self.config.jitter]

    def _jitter_params(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Per crop: factors (brightness, contrast, saturation, hue), n x 4, drawn uniformly as
        ColorJitter does, and the order of the four operations, n x 4."""
        b, c, s, h = self.config.jitter
        u = torch.rand(n, 4, generator=generator)
        order = torch.stack([torch.randperm(4, generator=generator) for _ in range(n)])
        lows = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
        highs = torch.tensor([1 + b, 1 + c, 1 + s, h])
        return lows + (highs - lows) * u, order

    def _color_jitter(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """ColorJitter semantics per crop: brightness, contrast, saturation and hue factors drawn
        uniformly, applied in a random order of the four, each clamped to [0, 1]."""
        n = x.shape[0]
        factors, order = self._jitter_params(n, generator)
        factors = factors.to(x.device)
        for slot in range(4):
            for op in range(4):
                if not self._active[op]:
                    continue
                idx = (order[:, slot] == op).nonzero().flatten()
                if not len(idx):
                    continue
                f = factors[idx, op].view(-1, 1, 1, 1)
                y = x[idx]
                if op == 0:
                    y = (y * f).clamp_(0.0, 1.0)
                elif op == 1:
                    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
                    y = (f * y + (1 - f) * mean).clamp_(0.0, 1.0)
                elif op == 2:
                    y = (f * y + (1 - f) * _gray(y)).clamp_(0.0, 1.0)
                else:
                    y = adjust_hue(y, factors[idx, op])
                x[idx] = y
        return x


def _jitter_pil(
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
