"""Multi-crop augmentation (SwAV paper, Sec. 3.2 and Appendix A).

Each image gives ``sum(n_crops)`` views: for each resolution group, ``n`` random resized crops of
``size`` px covering a random fraction in ``[min_scale, max_scale]`` of the image, then a
horizontal flip, colour jitter, grayscale, Gaussian blur and normalisation. The main recipe is
2 x 224 px at scale (0.14, 1) plus 6 x 96 px at scale (0.05, 0.14).

The image is decoded and turned into a uint8 tensor once; every crop is taken from that tensor
and resized with antialiasing, and the photometric operations run on the small crop only, as a
few in-place float operations per crop (each crop fits in the CPU's cache, so they cost little):
about 2.2 to 2.4x the images/s of the torchvision PIL pipeline per core
(``benchmarks/perf.py --only multicrop``). All randomness comes from one ``torch.Generator`` when
given (reproducible from a seed), else from torch's global generator (which DataLoader seeds per
worker).
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
    backend: str = "tensor"
    """Photometric operations: 'tensor' (torch float operations per crop, in place; the fastest on
    a CPU, and what runs on a device with MultiCrop(device=...)) or 'pil' (Pillow's operations on
    uint8 crops, as the reference implementation and torchvision's PIL transforms do)."""
    on_device: bool = False
    """Crop and augment on the training device, a whole batch at a time (MultiCrop.batch): the
    loader workers only decode. For GPUs whose CPU cannot keep up with the per-image pipeline;
    uses the tensor operations."""

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
        if self.on_device and self.backend != "tensor":
            raise ValueError(
                "multicrop.on_device runs the tensor operations on the device: set "
                "multicrop.backend=tensor or multicrop.on_device=false"
            )

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


def _gray(x: Tensor) -> Tensor:
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


def _jitter_op(x: Tensor, op: int, f: float | Tensor) -> Tensor:
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
        mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
        return x.mul_(f).add_(mean * (1.0 - f)).clamp_(0.0, 1.0)
    grey = _gray(x).mul_(1.0 - f)
    return x.mul_(f).add_(grey).clamp_(0.0, 1.0)


def color_jitter(x: Tensor, factors: list[float], order: list[int], active: list[bool]) -> Tensor:
    """ColorJitter on one float crop in [0, 1] (3 x H x W, modified in place where possible):
    brightness, contrast, saturation and hue with the given factors, in the given order, each
    clamped to [0, 1] as torchvision does."""
    for op in order:
        if active[op]:
            x = _jitter_op(x, op, factors[op])
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
            x = _on_rows(x, [i for i, _ in picked], lambda t, op=op, f=f: _jitter_op(t, op, f))
    grays = [i for i, s in enumerate(steps) if s["gray"]]
    x = _on_rows(x, grays, lambda t: _gray(t).expand(-1, 3, -1, -1).contiguous())
    blurred = [(i, s["sigma"]) for i, s in enumerate(steps) if s["sigma"] is not None]
    sigmas = [s for _, s in blurred]
    return _on_rows(x, [i for i, _ in blurred], lambda t: gaussian_blur_batch(t, sigmas))


class MultiCrop:
    """Callable turning one image into a list of crops ordered by resolution group.

    ``MultiCrop(cfg)(img)`` returns ``sum(cfg.n_crops)`` float tensors (3 x size x size),
    normalised; ``groups`` tells how many crops of each size. Every crop has its own random box
    and photometric parameters, drawn in the same order whatever the backend.
    """

    def __init__(
        self,
        config: MultiCropConfig | None = None,
        device: str | torch.device | None = None,
        **overrides,
    ) -> None:
        """``device``: run the crops and the photometric work there (e.g. ``"cuda"``, for when
        the CPU cannot keep up); it implies the tensor backend."""
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
        self._mean = torch.tensor(config.mean, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(3, 1, 1)

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

    def _draw_group(
        self,
        height: int,
        width: int,
        n: int,
        scale: Sequence[float],
        generator: torch.Generator | None,
    ) -> tuple[list[tuple[int, int, int, int]], list[dict]]:
        """The random parameters of ``n`` crops of one group from an image of height x width:
        boxes (top, left, h, w) and per crop the photometric steps (flip, jitter factors and
        order, grayscale, blur sigma), always drawn in the same order from ``generator``."""
        cfg = self.config
        boxes = [
            sample_crop_box(height, width, tuple(scale), generator=generator) for _ in range(n)
        ]
        u = torch.rand(n, 5, generator=generator).tolist()
        jit = [row[1] < cfg.jitter_prob for row in u]
        factors, order = self._jitter_params(sum(jit), generator)
        lo, hi = cfg.blur_sigma
        steps, j = [], 0
        for row, jittered in zip(u, jit):
            steps.append(
                dict(
                    flip=row[0] < cfg.flip_prob,
                    jitter=(factors[j], order[j]) if jittered else None,
                    gray=row[2] < cfg.grayscale_prob,
                    sigma=lo + (hi - lo) * row[4] if row[3] < cfg.blur_prob else None,
                )
            )
            j += jittered
        return boxes, steps

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
        boxes, steps = self._draw_group(src.shape[1], src.shape[2], n, scale, generator)
        out = torch.empty(n, 3, size, size, device=src.device)
        photometric = self._photometric_pil if self.config.backend == "pil" else self._photometric
        for (top, left, h, w), step, dst in zip(boxes, steps, out):
            crop = TF.resized_crop(src, top, left, h, w, [size, size], antialias=True)
            x = photometric(crop, **step)
            torch.sub(x, self._mean, out=dst).div_(self._std)
        return out

    def batch(
        self,
        images: Sequence[Tensor],
        generators: Sequence[torch.Generator | None] | None = None,
        device: str | torch.device | None = None,
    ) -> list[Tensor]:
        """Multi-crops of a whole batch of decoded images, computed batched on ``device``.

        ``images`` are 3 x H x W uint8 tensors, PIL images or arrays (sizes may differ),
        ``generators`` one per image (or None: torch's global generator). Returns
        ``sum(n_crops)`` tensors of len(images) x 3 x size x size, crop ``v`` of every image in
        the ``v``-th, as the loader's batches. The random parameters are those ``__call__`` draws
        from the same generator; the work is a few batched operations per resolution group
        instead of many small ones per crop, which is what a GPU needs when the CPU cannot keep
        up with the per-image pipeline. The resize is an area-averaged bilinear resampling
        (``roi_align`` with adaptive sampling) of the image itself, close to but not bit-equal
        with the per-image antialiased resize of the cut-out box: near the box's edges it reads
        the neighbouring pixels of the image instead of repeating the edge."""
        from torchvision.ops import roi_align

        cfg = self.config
        device = torch.device(device) if device is not None else self._mean.device
        images = [to_uint8_tensor(img) for img in images]
        if not images:
            raise ValueError("MultiCrop.batch needs at least one image")
        for img in images:  # checked before any work is done on the device
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"MultiCrop.batch takes 3 x H x W uint8 images (to_uint8_tensor makes them "
                    f"from PIL images and arrays), got {img.dtype} of shape {tuple(img.shape)}"
                )
        gens = list(generators) if generators is not None else [None] * len(images)
        if len(gens) != len(images):
            raise ValueError(f"got {len(images)} images but {len(gens)} generators")
        groups = list(zip(cfg.n_crops, cfg.sizes, cfg.min_scale, cfg.max_scale))
        draws = [  # per image, per group: (boxes, steps), in __call__'s order of draws
            [
                self._draw_group(img.shape[1], img.shape[2], n, (lo, hi), g)
                for n, _, lo, hi in groups
            ]
            for img, g in zip(images, gens)
        ]
        crops: list[list[Tensor]] = [[] for _ in groups]  # per group, per image
        for img, per_image in zip(images, draws):
            src = img.to(device, non_blocking=True)[None].float()  # one image in float at a time
            for (_, size, _, _), (boxes, _), group_crops in zip(groups, per_image, crops):
                rois = torch.tensor(
                    [[left, top, left + w, top + h] for top, left, h, w in boxes],
                    dtype=torch.float32,
                ).to(device, non_blocking=True)
                group_crops.append(roi_align(src, [rois], size, 1.0, -1, aligned=True))
        mean, std = self._mean.to(device), self._std.to(device)
        out: list[Tensor] = []
        for gi, (n, size, _, _) in enumerate(groups):
            x = torch.cat(crops[gi]).mul_(1.0 / 255.0).clamp_(0.0, 1.0)
            steps = [step for per_image in draws for step in per_image[gi][1]]
            x = photometric_batch(x, steps, self._active)
            x = x.sub_(mean).div_(std).view(len(images), n, 3, size, size)
            out += list(x.unbind(1))
        return out

    def _photometric(self, crop: Tensor, flip, jitter, gray, sigma) -> Tensor:
        """Flip, jitter, grayscale and blur of one uint8 crop with torch float operations, in
        place where possible; returns floats in [0, 1]."""
        if flip:
            crop = crop.flip(-1)
        x = crop.float().mul_(1.0 / 255.0)
        if jitter is not None:
            x = color_jitter(x, *jitter, self._active)
        if gray:
            x = _gray(x).expand(3, -1, -1)
        if sigma is not None:
            x = gaussian_blur(x, sigma)
        return x

    def _photometric_pil(self, crop: Tensor, flip, jitter, gray, sigma) -> Tensor:
        """The same operations with Pillow on the uint8 crop (as torchvision's PIL transforms)."""
        im = Image.fromarray(crop.permute(1, 2, 0).numpy())
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if jitter is not None:
            im = _jitter_pil(im, *jitter, self._active)
        if gray:
            im = im.convert("L").convert("RGB")
        if sigma is not None:
            im = im.filter(ImageFilter.GaussianBlur(radius=sigma))
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().mul_(1.0 / 255.0)

    def augment(
        self, src: Tensor, size: int, scale: Sequence[float], generator: torch.Generator | None
    ) -> Tensor:
        """One crop of ``size`` px from a 3 x H x W uint8 tensor."""
        return self.augment_group(src, 1, size, scale, generator)[0]

    @property
    def _active(self) -> list[bool]:
        return [v > 0 for v in self.config.jitter]

    def _jitter_params(
        self, n: int, generator: torch.Generator | None
    ) -> tuple[list[list[float]], list[list[int]]]:
        """Per crop: factors (brightness, contrast, saturation, hue) drawn uniformly as
        ColorJitter does, and the order of the four operations."""
        if n == 0:
            return [], []
        b, c, s, h = self.config.jitter
        u = torch.rand(n, 4, generator=generator)
        order = [torch.randperm(4, generator=generator).tolist() for _ in range(n)]
        lows = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
        highs = torch.tensor([1 + b, 1 + c, 1 + s, h])
        return (lows + (highs - lows) * u).tolist(), order


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
