"""Multi-crop augmentation (SwAV paper, Sec. 3.2 and Appendix A).

Each image gives ``sum(n_crops)`` views: for each resolution group, ``n`` random resized crops of
``size`` px covering a random fraction in ``[min_scale, max_scale]`` of the image, then a
horizontal flip, colour jitter, grayscale, Gaussian blur and normalisation.

The image is decoded and turned into a uint8 tensor once; every crop is taken from that tensor
and resized with antialiasing, and the photometric operations (``swav.data.photometric``) run on
the small crop only, as a few in-place float operations per crop: about 2.2 to 2.4x the images/s
of the torchvision PIL pipeline per core (``benchmarks/perf.py --only multicrop``). All
randomness comes from one ``torch.Generator`` when given (reproducible from a seed), else from
torch's global generator (which DataLoader seeds per worker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from swav.data.multicrop_config import MultiCropConfig
from swav.data.photometric import (
    color_jitter,
    gaussian_blur,
    jitter_pil,
    photometric_batch,
    to_gray,
)
from swav.data.transforms import to_uint8_tensor
from swav.errors import UsageError

__all__ = ["MultiCrop", "MultiCropConfig", "sample_crop_box"]


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
        **overrides: Any,
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
        self,
        img: Image.Image | np.ndarray | Tensor,
        generator: torch.Generator | None = None,
        as_uint8: bool = False,
    ) -> list[Tensor]:
        """The crops of ``img``, normalised floats; with ``as_uint8`` the augmented crops as
        uint8 before normalisation (a quarter of the bytes to ship from a loader worker;
        ``normalize`` finishes them on the training device)."""
        src = to_uint8_tensor(img)
        if self.device is not None:
            src = src.to(self.device, non_blocking=True)
        cfg = self.config
        crops: list[Tensor] = []
        for n, size, lo, hi in zip(cfg.n_crops, cfg.sizes, cfg.min_scale, cfg.max_scale):
            group = self.augment_group(src, n, size, (lo, hi), generator, as_uint8)
            crops += list(group.unbind(0))
        return crops

    def normalize(self, crops: Tensor) -> Tensor:
        """uint8 crops (``as_uint8``) as the normalised floats ``__call__`` gives, computed
        where ``crops`` are (the training device); float crops are returned as they are."""
        if crops.dtype != torch.uint8:
            return crops
        mean, std = self._mean.to(crops.device), self._std.to(crops.device)
        return crops.float().mul_(1.0 / 255.0).sub_(mean).div_(std)

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
            sample_crop_box(height, width, (scale[0], scale[1]), generator=generator)
            for _ in range(n)
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
        as_uint8: bool = False,
    ) -> Tensor:
        """``n`` crops of ``size`` px from a 3 x H x W uint8 image, as an n x 3 x size x size
        float batch (or uint8 before normalisation, with ``as_uint8``), each crop with its own
        random box and photometric parameters."""
        boxes, steps = self._draw_group(src.shape[1], src.shape[2], n, scale, generator)
        dtype = torch.uint8 if as_uint8 else torch.float32
        out = torch.empty(n, 3, size, size, device=src.device, dtype=dtype)
        photometric = self._photometric_pil if self.config.backend == "pil" else self._photometric
        for (top, left, h, w), step, dst in zip(boxes, steps, out):
            crop = TF.resized_crop(src, top, left, h, w, [size, size], antialias=True)
            x = photometric(crop, **step)
            if as_uint8:  # rounded to the nearest of the 256 levels the image came in
                dst.copy_(x.mul(255.0).round_().clamp_(0.0, 255.0))
            else:
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
            raise UsageError("MultiCrop.batch needs at least one image")
        for img in images:  # checked before any work is done on the device
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise UsageError(
                    f"MultiCrop.batch takes 3 x H x W uint8 images (to_uint8_tensor makes them "
                    f"from PIL images and arrays), got {img.dtype} of shape {tuple(img.shape)}"
                )
        gens = list(generators) if generators is not None else [None] * len(images)
        if len(gens) != len(images):
            raise UsageError(f"got {len(images)} images but {len(gens)} generators")
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

    def _photometric(
        self, crop: Tensor, flip: bool, jitter: Any, gray: bool, sigma: float | None
    ) -> Tensor:
        """Flip, jitter, grayscale and blur of one uint8 crop with torch float operations, in
        place where possible; returns floats in [0, 1]."""
        if flip:
            crop = crop.flip(-1)
        x = crop.float().mul_(1.0 / 255.0)
        if jitter is not None:
            x = color_jitter(x, jitter[0], jitter[1], self._active)
        if gray:
            x = to_gray(x).expand(3, -1, -1)
        if sigma is not None:
            x = gaussian_blur(x, sigma)
        return x

    def _photometric_pil(
        self, crop: Tensor, flip: bool, jitter: Any, gray: bool, sigma: float | None
    ) -> Tensor:
        """The same operations with Pillow on the uint8 crop (as torchvision's PIL transforms)."""
        im = Image.fromarray(crop.permute(1, 2, 0).numpy())
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if jitter is not None:
            im = jitter_pil(im, jitter[0], jitter[1], self._active)
        if gray:
            im = im.convert("L").convert("RGB")
        if sigma is not None:
            im = im.filter(ImageFilter.GaussianBlur(radius=sigma))
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().mul_(1.0 / 255.0)

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
