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
from PIL import Image
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
        t = t.expand(3, -1, -1)
    return t.contiguous()


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


class MultiCrop:
    """Callable turning one image into a list of crops ordered by resolution group.

    ``MultiCrop(cfg)(img)`` returns ``sum(cfg.n_crops)`` float tensors (3 x size x size),
    normalised; ``groups`` tells how many crops of each size.
    """

    def __init__(self, config: MultiCropConfig | None = None, **overrides) -> None:
        config = config or MultiCropConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"unknown multi-crop parameter {k!r}")
            setattr(config, k, v)
        config.validate()
        self.config = config
        self._mean = torch.tensor(config.mean).view(3, 1, 1)
        self._std = torch.tensor(config.std).view(3, 1, 1)

    @property
    def groups(self) -> list[tuple[int, int]]:
        """(count, size) per resolution group."""
        return list(zip(self.config.n_crops, self.config.sizes))

    def __call__(
        self, img: Image.Image | np.ndarray | Tensor, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        src = to_uint8_tensor(img)
        cfg = self.config
        crops = []
        for n, size, lo, hi in zip(cfg.n_crops, cfg.sizes, cfg.min_scale, cfg.max_scale):
            for _ in range(n):
                crops.append(self.augment(src, size, (lo, hi), generator))
        return crops

    def augment(
        self, src: Tensor, size: int, scale: Sequence[float], generator: torch.Generator | None
    ) -> Tensor:
        """One crop of ``size`` px from a 3 x H x W uint8 tensor."""
        cfg = self.config
        top, left, h, w = sample_crop_box(
            src.shape[1], src.shape[2], tuple(scale), generator=generator
        )
        crop = TF.resized_crop(src, top, left, h, w, [size, size], antialias=True)
        u = torch.rand(5, generator=generator).tolist()
        if u[0] < cfg.flip_prob:
            crop = crop.flip(-1)
        x = crop.float().div_(255.0)
        if u[1] < cfg.jitter_prob:
            x = self._color_jitter(x, generator)
        if u[2] < cfg.grayscale_prob:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if u[3] < cfg.blur_prob:
            lo, hi = cfg.blur_sigma
            x = gaussian_blur(x, lo + (hi - lo) * u[4])
        return (x - self._mean) / self._std

    def _color_jitter(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        b, c, s, h = self.config.jitter
        u = torch.rand(4, generator=generator).tolist()
        order = torch.randperm(4, generator=generator).tolist()
        for op in order:
            if op == 0 and b > 0:
                x = TF.adjust_brightness(x, _uni(u[0], 1 - b, 1 + b))
            elif op == 1 and c > 0:
                x = TF.adjust_contrast(x, _uni(u[1], 1 - c, 1 + c))
            elif op == 2 and s > 0:
                x = TF.adjust_saturation(x, _uni(u[2], 1 - s, 1 + s))
            elif op == 3 and h > 0:
                x = TF.adjust_hue(x, _uni(u[3], -h, h))
        return x


def _uni(u: float, lo: float, hi: float) -> float:
    """Map u ~ U[0, 1) to U[max(lo, 0), hi) (jitter factors are never negative)."""
    lo = max(lo, 0.0)
    return lo + (hi - lo) * u
