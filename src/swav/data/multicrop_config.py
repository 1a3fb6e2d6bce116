"""The settings of multi-crop augmentation (SwAV paper, Sec. 3.2 and Appendix A), with the
paper's defaults: 2 x 224 px at scale (0.14, 1) plus 6 x 96 px at scale (0.05, 0.14), flip,
colour jitter of strength 1, grayscale and Gaussian blur."""

from __future__ import annotations

from dataclasses import dataclass, field

from swav.data.settings import IMAGENET_MEAN, IMAGENET_STD
from swav.errors import ConfigError


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
    eval_size: int = 0
    """Size in pixels at which a trained model sees whole images for evaluation, embedding and
    prediction; 0: the large crop size. Training on crops smaller than the images (e.g. 24 px
    crops of 32 px images, 0.56x the compute) and evaluating at the images' size works because
    random-resized crops show objects larger than the whole image does (FixRes, Touvron et
    al. 2019)."""
    on_device: bool = False
    """Crop and augment on the training device, a whole batch at a time (MultiCrop.batch): the
    loader workers only decode. For GPUs whose CPU cannot keep up with the per-image pipeline;
    uses the tensor operations."""

    def validate(self) -> None:
        groups = len(self.n_crops)
        for name in ("sizes", "min_scale", "max_scale"):
            if len(getattr(self, name)) != groups:
                raise ConfigError(
                    f"multicrop.{name} has {len(getattr(self, name))} entries but "
                    f"multicrop.n_crops has {groups}: give one value per resolution group"
                )
        for n, s, lo, hi in zip(self.n_crops, self.sizes, self.min_scale, self.max_scale):
            if n < 1 or s < 1:
                raise ConfigError(f"multicrop: crop counts and sizes must be >= 1, got {n}, {s}")
            if not 0 < lo <= hi <= 1:
                raise ConfigError(
                    f"multicrop: scale bounds must satisfy 0 < min_scale <= max_scale <= 1, "
                    f"got ({lo}, {hi})"
                )
        if self.eval_size < 0:
            raise ConfigError(
                f"multicrop.eval_size must be >= 0 (0: the large crop size), got {self.eval_size}"
            )
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ConfigError(f"multicrop.{name} must be in [0, 1], got {p}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ConfigError(
                "multicrop.jitter must be [brightness, contrast, saturation, hue] >= 0, hue <= 0.5"
            )
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError("multicrop.blur_sigma must be [min, max] with 0 < min <= max")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("multicrop.mean and multicrop.std need 3 values, std > 0")
        if self.backend not in ("pil", "tensor"):
            raise ConfigError(f"multicrop.backend must be 'pil' or 'tensor', got {self.backend!r}")
        if self.on_device and self.backend != "tensor":
            raise ConfigError(
                "multicrop.on_device runs the tensor operations on the device: set "
                "multicrop.backend=tensor or multicrop.on_device=false"
            )

    @property
    def evaluation_size(self) -> int:
        """The size whole images are evaluated at: ``eval_size``, else the large crop size."""
        return self.eval_size or self.sizes[0]

    @property
    def total_crops(self) -> int:
        return sum(self.n_crops)
