"""Images to tensors: the uint8 conversion every pipeline starts from, and the deterministic
evaluation transform and the light training transform of the supervised protocols."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from swav.data.settings import IMAGENET_MEAN, IMAGENET_STD


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


class EvalTransform:
    """Resize the shorter side to ``size / crop_fraction``, centre-crop ``size``, normalise.

    ``crop_fraction=0.875`` is the usual Resize(256) + CenterCrop(224); use 1.0 for small images
    (CIFAR, digits), which are simply resized to ``size``. ``EvalTransform.for_size`` picks it.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_fraction: float = 0.875,
    ) -> None:
        self.size, self.crop_fraction = size, crop_fraction
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)

    @classmethod
    def for_size(
        cls,
        size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> EvalTransform:
        """The evaluation transform for crops of ``size`` px: small images (<= 64 px) are
        resized whole, larger ones resized and centre-cropped to 87.5 %."""
        return cls(size, mean, std, crop_fraction=1.0 if size <= 64 else 0.875)

    @property
    def mean_values(self) -> list[float]:
        return self.mean.flatten().tolist()

    @property
    def std_values(self) -> list[float]:
        return self.std.flatten().tolist()

    def key(self) -> str:
        """A string that identifies the transform (for feature caches)."""
        return f"eval{self.size}-{self.crop_fraction}-{self.mean_values}-{self.std_values}"

    def __call__(self, img: Any) -> Tensor:
        t = to_uint8_tensor(img)
        resize = int(round(self.size / self.crop_fraction))
        t = TF.resize(
            t, [resize] if self.crop_fraction < 1 else [self.size, self.size], antialias=True
        )
        if self.crop_fraction < 1:
            t = TF.center_crop(t, [self.size, self.size])
        return (t.float() / 255.0 - self.mean) / self.std


class TrainTransform:
    """RandomResizedCrop(size) + horizontal flip + normalise: the supervised protocols' training
    augmentation (linear evaluation, semi-supervised fine-tuning), at the size and with the
    normalisation of an evaluation transform."""

    def __init__(self, eval_transform: EvalTransform) -> None:
        from torchvision.transforms import v2 as T

        self.size = eval_transform.size
        self._tf = T.Compose(
            [
                T.RandomResizedCrop(self.size, antialias=True),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(eval_transform.mean_values, eval_transform.std_values),
            ]
        )

    def __call__(self, img: Any) -> Tensor:
        return self._tf(to_uint8_tensor(img))
