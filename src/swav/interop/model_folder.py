"""Model folders: what a Hugging Face Hub repository of this library holds, written and read.

A model folder holds:

- ``model.safetensors``: the backbone's tensors, with torchvision / timm parameter names;
- ``swav_heads.safetensors``: the projection head and prototypes (and a classifier, if any);
- ``config.json``: timm's model configuration (``architecture``, ``num_classes`` 0,
  ``pretrained_cfg`` with the input size, mean and std) when timm builds this backbone, and this
  library's settings under ``"swav"`` (the architecture, the pretraining configuration);
- ``README.md``: a model card generated from the run (data, recipe, curves, evaluation results,
  the command that reproduces it), with ``loss.png`` beside it when the run has one.

So one folder is read by ``timm.create_model("hf-hub:user/name", pretrained=True)`` (or
``"local-dir:FOLDER"``), by ``swav ... --checkpoint hf-hub:user/name`` and by ``--checkpoint
FOLDER`` (a local clone). ``swav export --format timm`` writes the same folder without heads and
card (``swav.publish`` writes the card and uploads). Finding a repository in the Hugging
Face cache, or downloading it, needs ``huggingface_hub`` (``pip install 'swav[hub]'``); writing
and reading a folder do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from swav.data.settings import IMAGENET_MEAN, IMAGENET_STD
from swav.engine.checkpoint import atomic_write
from swav.errors import SwAVError, UsageError
from swav.interop.formats import backbone_state_dict, check_standard_resnet, shareable_meta
from swav.model.swav import SwAV

HUB_PREFIX = "hf-hub:"
WEIGHTS = "model.safetensors"
HEADS = "swav_heads.safetensors"
CONFIG = "config.json"
CARD = "README.md"
FOLDER_FILES = (CONFIG, WEIGHTS, HEADS, CARD, "loss.png")
FORMAT_VERSION = 1


class HubError(SwAVError, OSError):
    """A hub repository could not be reached, found in the cache, or pushed."""


def is_model_folder(path: Path) -> bool:
    """A folder written by ``write_model_folder`` (or a clone of such a repository)."""
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def split_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:user/name@revision`` -> (``user/name``, ``revision``); refused when malformed."""
    repo, _, revision = name[len(HUB_PREFIX) :].partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"{name!r}: a hub model is named hf-hub:OWNER/NAME (optionally @REVISION)")
    return repo, revision or None


def require_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError(
            "the Hugging Face Hub needs huggingface_hub: pip install 'swav[hub]'"
        ) from None
    return huggingface_hub


def hub_folder(name: str, download: bool = False) -> Path:
    """The local folder of ``hf-hub:OWNER/NAME[@REVISION]``: from the Hugging Face cache
    (``HF_HUB_CACHE``, as ``huggingface_hub`` keeps it), downloaded only with ``download``.
    ``HF_HUB_OFFLINE=1`` reads the cache alone, as everywhere in ``huggingface_hub``."""
    repo, revision = split_hub_name(name)
    hub = require_hub()
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hub.snapshot_download(
            repo,
            revision=revision,
            allow_patterns=list(FOLDER_FILES),
            local_files_only=not download,
        )
    except LocalEntryNotFoundError:
        where = hub.constants.HF_HUB_CACHE
        if download:
            raise HubError(
                f"{name}: not in the Hugging Face cache ({where}) and the hub could not be "
                "reached (HF_HUB_OFFLINE is set, or no network); connect, or copy the "
                "repository there"
            ) from None
        raise HubError(
            f"{name} is not in the Hugging Face cache ({where}); pass --download "
            "(download=True) to fetch it, or give the folder of a local clone"
        ) from None
    except Exception as e:  # repository not found, refused, no network: the hub's own words
        raise HubError(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    folder = Path(path)
    if not is_model_folder(folder):
        raise HubError(f"{name} holds no {CONFIG} and {WEIGHTS}: it is not a model repository")
    return folder


def read_model_folder(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(the model's tensors with this library's names, the folder's ``config.json``)."""
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    sd = dict(load_file(str(folder / WEIGHTS)))
    if (folder / HEADS).is_file():
        sd.update(load_file(str(folder / HEADS)))
    return sd, config


def timm_architecture(model: SwAV, arch: str | None) -> str | None:
    """The timm model name that builds this backbone with the same tensors, else None."""
    try:
        check_standard_resnet(model, arch, "timm")
    except UsageError:
        return None
    return arch


def timm_config(model: SwAV, arch: str, pretraining: dict[str, Any] | None) -> dict[str, Any]:
    """timm's ``config.json``: the architecture without a classifier, and the evaluation
    input (size, mean, std) the features were trained for."""
    mc = (pretraining or {}).get("multicrop", {})
    size = int(mc.get("eval_size") or (mc.get("sizes") or [224])[0])
    return {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(model.num_features),
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "swav",
            "input_size": [3, size, size],
            "fixed_input_size": False,
            "interpolation": "bilinear",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": list(mc.get("mean", IMAGENET_MEAN)),
            "std": list(mc.get("std", IMAGENET_STD)),
            "num_classes": 0,
            "pool_size": [max(1, size // 32)] * 2,
            "first_conv": "conv1",
            "classifier": "fc",
        },
    }


def _save_tensors(tensors: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write(path, lambda f: f.write(data))


def write_model_folder(
    model: SwAV,
    folder: str | Path,
    *,
    arch: str | None,
    timm_arch: str | None,
    pretraining: dict[str, Any] | None = None,
    classifier: torch.nn.Linear | None = None,
    heads: bool = True,
    card: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``model`` as a model folder (see the module's text); returns the files written.

    ``timm_arch``: the timm name that builds the backbone (``timm_architecture``), None when
    timm cannot. ``heads``: also the projection head, prototypes and classifier
    (``swav_heads.safetensors``). ``card``: the model card's text (``README.md``). ``extra``:
    more entries of ``"swav"``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = timm_config(model, timm_arch, pretraining) if timm_arch else {}
    swav_meta = shareable_meta({"pretraining": pretraining, **(extra or {})})
    config["swav"] = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "timm": timm_arch is not None,
        "num_features": int(model.num_features),
        "n_prototypes": model.n_prototypes,
        **swav_meta,
    }
    written = []
    meta = {"format": "pt", "arch": str(arch)}
    _save_tensors(backbone_state_dict(model), folder / WEIGHTS, meta)
    written.append(folder / WEIGHTS)
    rest = {
        k: v
        for k, v in model.state_dict().items()
        if k.split(".")[0] in ("projection_head", "prototypes")
    }
    if classifier is not None:
        rest["fc.weight"] = classifier.weight
        if classifier.bias is not None:
            rest["fc.bias"] = classifier.bias
    if heads and rest:
        _save_tensors(rest, folder / HEADS, meta)
        written.append(folder / HEADS)
    else:
        (folder / HEADS).unlink(missing_ok=True)
    text = (json.dumps(config, indent=2, default=str) + "\n").encode()
    written.append(atomic_write(folder / CONFIG, lambda f: f.write(text)))
    if card is not None:
        written.append(atomic_write(folder / CARD, lambda f: f.write(card.encode())))
    return written
