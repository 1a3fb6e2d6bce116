"""The reference implementation's released checkpoints, by name.

``swav.load_checkpoint("swav_800ep", download=True)`` fetches the file into the cache
(``$SWAV_CACHE`` or ``~/.cache/swav/hub``) once, then loads it like a local file. Nothing is
downloaded unless asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from swav.errors import SwAVError, UsageError

BASE_URL = "https://dl.fbaipublicfiles.com/deepcluster/"


@dataclass(frozen=True)
class Released:
    file: str
    arch: str
    recipe: str
    top1: float | None

    @property
    def url(self) -> str:
        return BASE_URL + self.file


RELEASED: dict[str, Released] = {
    "swav_800ep": Released(
        "swav_800ep_pretrain.pth.tar", "resnet50", "800 epochs, batch 4096, 2x224+6x96", 75.3
    ),
    "swav_400ep": Released(
        "swav_400ep_pretrain.pth.tar", "resnet50", "400 epochs, batch 4096, 2x224+6x96", 74.6
    ),
    "swav_200ep": Released(
        "swav_200ep_pretrain.pth.tar", "resnet50", "200 epochs, batch 4096, 2x224+6x96", 73.9
    ),
    "swav_100ep": Released(
        "swav_100ep_pretrain.pth.tar", "resnet50", "100 epochs, batch 4096, 2x224+6x96", 72.1
    ),
    "swav_200ep_bs256": Released(
        "swav_200ep_bs256_pretrain.pth.tar", "resnet50", "200 epochs, batch 256, queue 3840", 72.7
    ),
    "swav_400ep_bs256": Released(
        "swav_400ep_bs256_pretrain.pth.tar", "resnet50", "400 epochs, batch 256, queue 3840", 74.3
    ),
    "swav_400ep_2x224": Released(
        "swav_400ep_2x224_pretrain.pth.tar", "resnet50", "400 epochs, batch 4096, 2x224 only", 70.1
    ),
    "deepclusterv2_800ep": Released(
        "deepclusterv2_800ep_pretrain.pth.tar",
        "resnet50",
        "DeepCluster-v2, 800 epochs, 2x224+6x96",
        75.2,
    ),
    "selav2_400ep": Released(
        "selav2_400ep_pretrain.pth.tar", "resnet50", "SeLa-v2, 400 epochs, 2x224+6x96", 71.8
    ),
    "swav_RN50w2_400ep": Released(
        "swav_RN50w2_400ep_pretrain.pth.tar",
        "resnet50w2",
        "400 epochs, batch 4096, 2x224+4x96",
        77.3,
    ),
    "swav_RN50w4_400ep": Released(
        "swav_RN50w4_400ep_pretrain.pth.tar",
        "resnet50w4",
        "400 epochs, batch 2560, 2x224+4x96",
        77.9,
    ),
    "swav_RN50w5_400ep": Released(
        "swav_RN50w5_400ep_pretrain.pth.tar", "resnet50w5", "400 epochs, 2x224+4x96", 78.5
    ),
    "swav_800ep_eval_linear": Released(
        "swav_800ep_eval_linear.pth.tar",
        "linear head",
        "linear classifier of swav_800ep (1000 classes)",
        75.3,
    ),
}


class NotCachedError(SwAVError, FileNotFoundError):
    """A released checkpoint that is not in the cache and was not asked to download."""


class DownloadError(SwAVError, OSError):
    """A released checkpoint could not be downloaded (offline, moved, refused)."""


def cache_dir() -> Path:
    """Where released checkpoints are kept (``$SWAV_CACHE``, else ``~/.cache/swav/hub``)."""
    return Path(os.environ.get("SWAV_CACHE", Path.home() / ".cache" / "swav" / "hub"))


def fetch(name: str, download: bool = False) -> Path:
    """Path of a released file in the cache; downloads it only with ``download=True``."""
    if name not in RELEASED:
        raise UsageError(f"no released checkpoint {name!r}; see `swav zoo`")
    path = cache_dir() / RELEASED[name].file
    if path.exists():
        return path
    if not download:
        raise NotCachedError(
            f"{name} is not in the cache ({path}); pass download=True (--download) to fetch "
            f"{RELEASED[name].url}"
        )
    from torch.hub import download_url_to_file

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(RELEASED[name].url, str(path), progress=True)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        reason = " ".join(str(getattr(e, "reason", e)).split())[:200]
        raise DownloadError(
            f"could not download {name} from {RELEASED[name].url} ({reason}); check the "
            f"network, or fetch the file by other means and place it at {path}"
        ) from e
    return path
