"""Load any known checkpoint layout into a SwAV model, never silently wrong.

Layouts (detected from the keys, see ``detect_layout``):
- ``swav-run``: this library's run checkpoints (``checkpoint.pt`` of a run directory);
- ``swav-export``: this library's exported backbones (``{"state_dict", "swav_meta"}``);
- ``reference``: the reference implementation's released pretraining files (bare state dicts
  with the ``module.`` prefix left by DistributedDataParallel) and its training checkpoints
  (``{"epoch", "state_dict", "optimizer", "amp"}``);
- ``reference-linear``: its linear-evaluation heads (``module.linear.weight`` / ``.bias``);
- ``mmselfsup``: mmselfsup / mmpretrain files (``backbone.*``, ``neck.*``, ``head.*``);
- ``torchvision``: plain torchvision ResNet state dicts (``fc`` is kept as a classifier).
The architecture (depth, width, stem, head sizes, number of prototypes) is read off the shapes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from swav.config import config_from_dict
from swav.data.settings import IMAGENET_MEAN, IMAGENET_STD
from swav.data.transforms import EvalTransform
from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import RunDir, is_run_checkpoint
from swav.errors import SwAVError
from swav.interop.heads import LinearHead, linear_layer, load_linear_head
from swav.model.backbones import RESNET_SPECS, BasicBlock, Bottleneck, ResNet
from swav.model.config import build_from_config
from swav.model.swav import SwAV
from swav.values import IGNORABLE_PARTS

log = logging.getLogger(__name__)

HEAD_PARTS = ("projection_head", "prototypes")


class CheckpointError(SwAVError, ValueError):
    """The file cannot be loaded as asked; the message lists what did not match."""


class CheckpointNotFoundError(SwAVError, FileNotFoundError):
    """No file, run directory or released checkpoint of that name."""


@dataclass
class LoadedModel:
    model: SwAV
    layout: str
    arch: str
    classifier: LinearHead | None = None
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def pretraining(self) -> dict[str, Any]:
        """The pretraining configuration the checkpoint carries (empty when none)."""
        return self.meta.get("config") or {}

    def eval_transform(self, size: int | None = None) -> EvalTransform:
        """The evaluation transform for this model: ``size`` (default: the pretraining's
        ``multicrop.eval_size``, else its large crop size, else 224) and the pretraining's
        normalisation (else ImageNet's)."""
        mc = self.pretraining.get("multicrop", {})
        size = size or mc.get("eval_size") or (mc.get("sizes") or [224])[0]
        return EvalTransform.for_size(
            size, mc.get("mean", IMAGENET_MEAN), mc.get("std", IMAGENET_STD)
        )


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def detect_layout(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    if is_run_checkpoint(obj):
        return "swav-run"
    if "swav_meta" in obj and "state_dict" in obj:
        return "swav-export"
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith("module.linear.") for k in keys) and not any(
        k.startswith("module.conv1") for k in keys
    ):
        return "reference-linear"
    if any(k.startswith("backbone.") for k in keys) and (
        "meta" in obj or any(k.startswith(("neck.", "head.")) for k in keys)
    ):
        return "mmselfsup"
    if any(k.startswith("module.") for k in keys):
        return "reference"
    if "conv1.weight" in keys and "fc.weight" in keys:
        return "torchvision"
    if "conv1.weight" in keys:
        return "reference"  # a release without the module. prefix (or our bare state dict)
    raise CheckpointError(
        "unrecognised checkpoint layout: no ResNet keys (conv1.weight, module.conv1.weight, "
        f"backbone.conv1.weight) among {len(keys)} keys such as {keys[:4]}"
    )


def infer_resnet(sd: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """(name, ResNet keyword arguments) from a backbone state dict without prefix."""
    if "conv1.weight" not in sd:
        raise CheckpointError("no conv1.weight: this does not hold a ResNet backbone")
    stem = sd["conv1.weight"]
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = []
    for s in range(1, 5):
        ids = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{s}\.(\d+)\.", k))}
        if not ids:
            raise CheckpointError(f"no blocks found for layer{s}")
        layers.append(max(ids) + 1)
    width = int(stem.shape[0])
    small_stem = stem.shape[-1] == 3
    block = Bottleneck if bottleneck else BasicBlock
    if bottleneck and width % 64 == 0:
        widen, base = width // 64, 64
    else:
        widen, base = 1, width
    kwargs = dict(
        block=block, layers=tuple(layers), widen=widen, small_stem=small_stem, base_width=base
    )
    name = next(
        (
            n
            for n, (b, ly, w, bw) in RESNET_SPECS.items()
            if b is block and ly == tuple(layers) and w == widen and bw == base
        ),
        f"resnet[{block.__name__},{layers},{width}]",
    )
    return name, kwargs


def _head_sizes(sd: dict[str, Tensor]) -> tuple[int, int, list[int]]:
    """(hidden_mlp, output_dim, n_prototypes) from projection_head.* / prototypes.* keys."""
    if "projection_head.0.weight" in sd and "projection_head.3.weight" in sd:
        hidden = int(sd["projection_head.0.weight"].shape[0])
        out = int(sd["projection_head.3.weight"].shape[0])
    elif "projection_head.weight" in sd:
        hidden, out = 0, int(sd["projection_head.weight"].shape[0])
    else:
        hidden, out = 0, 0
    if "prototypes.weight" in sd:
        protos = [int(sd["prototypes.weight"].shape[0])]
    else:
        heads = sorted(
            int(m.group(1))
            for k in sd
            if (m := re.match(r"prototypes\.prototypes(\d+)\.weight$", k))
        )
        protos = [int(sd[f"prototypes.prototypes{i}.weight"].shape[0]) for i in heads]
    return hidden, out, protos


_MM_PROTOTYPES = re.compile(r"^head\.(?:loss_module\.|loss\.)?prototypes\.(.+)$")


def _mmselfsup_to_reference(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmselfsup 0.x / 1.x and mmpretrain 1.x keys as this library names them.

    ``backbone.*`` -> the trunk; the SwAV neck's ``projection_neck.{0,1,3}`` (or one linear
    layer) -> ``projection_head.*``, its BatchNorm registered a second time as ``neck.bn``
    (mmselfsup) or ``neck.norm`` (mmpretrain) checked equal and dropped; ``head.prototypes``
    (mmselfsup 0.x), ``head.loss.prototypes`` (mmselfsup 1.x), ``head.loss_module.prototypes``
    (mmpretrain 1.x) -> ``prototypes.*``; a linear classifier ``head.fc.*`` (mmpretrain) ->
    ``fc.*``. Any other neck or head key is refused, so that nothing is dropped without a word."""
    out = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    neck = {k[len("neck.") :]: v for k, v in sd.items() if k.startswith("neck.")}
    proj = {
        k[len("projection_neck.") :]: v for k, v in neck.items() if k.startswith("projection_neck.")
    }
    out.update({"projection_head." + k: v for k, v in proj.items()})
    left = [f"neck.{k}" for k in neck if not k.startswith("projection_neck.")]
    for alias in ("bn", "norm"):
        for k in [k for k in left if k.startswith(f"neck.{alias}.")]:
            twin = proj.get("1." + k[len(f"neck.{alias}.") :])
            if twin is None or not torch.equal(twin, sd[k]):
                raise CheckpointError(
                    f"{k} is not the projection's BatchNorm (neck.projection_neck.1): a neck "
                    "of an unknown shape"
                )
            left.remove(k)
    for k, v in sd.items():
        m = _MM_PROTOTYPES.match(k)
        if m:
            out["prototypes." + m.group(1)] = v
        elif k.startswith("head.fc."):
            out["fc." + k[len("head.fc.") :]] = v
        elif k.startswith("head."):
            left.append(k)
    if left:
        raise CheckpointError(
            f"keys of an unknown neck or head: {left[:6]}{' ...' if len(left) > 6 else ''}; "
            "known: SwAVNeck (projection_neck), SwAVHead (prototypes), LinearClsHead (fc)"
        )
    return out


def _check_parts(ignore: Iterable[str]) -> set[str]:
    ignore = set(ignore)
    allowed = set(IGNORABLE_PARTS)
    bad = ignore - allowed
    if bad:
        raise CheckpointError(
            f"unknown parts to ignore {sorted(bad)}; choose from {sorted(allowed)}"
        )
    if "head" in ignore:
        ignore |= set(HEAD_PARTS)
    return ignore


def _refuse_orphan_prototypes(ignore: set[str], has_prototypes: bool) -> None:
    if "projection_head" in ignore and "prototypes" not in ignore and has_prototypes:
        raise CheckpointError(
            "leaving out the projection head leaves the prototypes without their input: "
            "ignore 'head' to leave out both, or 'prototypes' to keep the projection head"
        )


def drop_parts(model: SwAV, ignore: Iterable[str]) -> SwAV:
    """``model`` without the parts named in ``ignore`` (projection_head, prototypes, head)."""
    parts = _check_parts(ignore)
    _refuse_orphan_prototypes(parts, model.prototypes is not None)
    if "prototypes" in parts:
        model.prototypes = None
    if "projection_head" in parts:
        model.projection_head = None
        model.embedding_dim = model.num_features
    return model


def build_from_state_dict(sd: dict[str, Tensor], ignore: Iterable[str] = ()) -> tuple[SwAV, str]:
    """A SwAV model shaped after the tensors, with every tensor loaded (strict)."""
    ignore = _check_parts(ignore)
    name, kwargs = infer_resnet(sd)
    hidden, out, protos = _head_sizes(sd)
    _refuse_orphan_prototypes(ignore, bool(protos))
    if "projection_head" in ignore:
        hidden = out = 0
    if "prototypes" in ignore:
        protos = []
    backbone = ResNet(**kwargs)
    model = SwAV(
        backbone,
        hidden_mlp=hidden,
        output_dim=out,
        n_prototypes=protos[0] if len(protos) == 1 else protos,
    )
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p + ".") for p in ignore)}
    expected = set(model.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if not expected & set(sd):
        raise CheckpointError("no key of the file matches the model: nothing would be loaded")
    if missing or unexpected:
        raise CheckpointError(
            f"the file does not match a {name} SwAV model: {len(missing)} missing keys "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected "
            f"keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. Pass ignore=[...] "
            "(--ignore) with the parts to leave out (projection_head, prototypes, head, fc)"
        )
    for k, v in sd.items():
        if model.state_dict()[k].shape != v.shape:
            raise CheckpointError(
                f"{k}: the file has shape {tuple(v.shape)}, the {name} model "
                f"{tuple(model.state_dict()[k].shape)}"
            )
    model.load_state_dict(sd, strict=True)
    return model.eval(), name


def load_checkpoint(
    path_or_name: str | Path,
    ignore: Iterable[str] = (),
    download: bool = False,
    map_location: str = "cpu",
) -> LoadedModel:
    """Load a checkpoint file, a run directory, or a released checkpoint by name.

    Args:
        path_or_name: a file, a run directory (its ``checkpoint.pt``), a model folder (``swav
            hub push`` / ``swav export --format timm``, or a clone of such a hub repository),
            ``hf-hub:OWNER/NAME[@REVISION]`` (from the Hugging Face cache), or a name from
            ``swav.interop.zoo.RELEASED`` (e.g. ``"swav_800ep"``).
        ignore: parts allowed to be absent or left out: ``projection_head``, ``prototypes``,
            ``head`` (both), ``fc`` / ``classifier``.
        download: fetch a released checkpoint or a hub model into the cache if it is not
            there yet.
    """
    from swav.interop.model_folder import HUB_PREFIX, hub_folder, is_model_folder
    from swav.interop.zoo import RELEASED, fetch

    if str(path_or_name).startswith(HUB_PREFIX):
        folder = hub_folder(str(path_or_name), download=download)
        return load_model_folder(folder, ignore, source=str(path_or_name))
    p = Path(path_or_name).expanduser()
    if is_model_folder(p):
        return load_model_folder(p, ignore)
    if not p.exists() and str(path_or_name) in RELEASED:
        p = fetch(str(path_or_name), download=download)
    if p.is_dir():
        p = RunDir(p).checkpoint
    if not p.exists():
        raise CheckpointNotFoundError(
            f"no checkpoint at {p} (and no released checkpoint of that name; see `swav zoo`)"
        )
    obj = safe_load(p, map_location)
    layout = detect_layout(obj)
    meta: dict[str, Any] = {"source": str(p), "layout": layout}
    classifier, classes = None, None
    if layout == "swav-run":
        cfg = config_from_dict(obj["config"])
        model = build_from_config(cfg.model)
        model.load_state_dict(obj["model"], strict=True)
        drop_parts(model, ignore)
        meta["config"] = obj["config"]
        meta["epoch"] = obj.get("epoch")
        return LoadedModel(model.eval(), layout, cfg.model.arch, None, None, meta)
    if layout == "reference-linear":
        raise CheckpointError(
            f"{p} holds only a linear classifier (module.linear.*), no backbone: load it with "
            "swav.interop.checkpoints.load_linear_head and a backbone checkpoint"
        )
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    if layout == "swav-export":
        exported = dict(obj["swav_meta"])
        meta.update(exported, source=str(p), exported_from=exported.get("source"))
        sd = dict(sd)
    elif layout == "mmselfsup":
        sd = _mmselfsup_to_reference(sd)
    else:
        sd = _strip(dict(sd), "module.")
    if "fc.weight" in sd:
        w, b = sd.pop("fc.weight"), sd.pop("fc.bias", None)
        if not {"fc", "classifier"} & set(ignore):
            classifier = LinearHead(linear_layer(w, b)).eval()
    if layout == "torchvision":
        ignore = set(ignore) | {"head"}
    model, arch = build_from_state_dict(sd, ignore)
    return LoadedModel(model, layout, arch, classifier, classes, meta)


def load_model_folder(
    folder: Path, ignore: Iterable[str] = (), source: str | None = None
) -> LoadedModel:
    """A model folder (``swav.interop.model_folder``): backbone, heads when present, the pretraining
    configuration it carries, its classifier if any."""
    from swav.interop.model_folder import read_model_folder

    sd, config = read_model_folder(folder)
    own = config.get("swav") or {}
    classifier = None
    if "fc.weight" in sd:
        w, b = sd.pop("fc.weight"), sd.pop("fc.bias", None)
        if not {"fc", "classifier"} & set(ignore):
            classifier = LinearHead(linear_layer(w, b)).eval()
    parts = set(ignore)
    if not any(k.startswith(HEAD_PARTS) for k in sd):
        parts |= {"head"}  # a backbone alone (timm export)
    model, name = build_from_state_dict(sd, parts)
    meta: dict[str, Any] = {"source": source or str(folder), "layout": "model-folder"}
    if own.get("pretraining"):
        meta["config"] = own["pretraining"]
    return LoadedModel(model, "model-folder", own.get("arch") or name, classifier, None, meta)


def initial_weights(reference: str, download: bool = False) -> dict[str, Tensor]:
    """The weights ``model.init`` names, as a SwAV model's state dict: a released name, a run
    directory or a file of any layout ``load_checkpoint`` reads (this project's runs and
    exports, the reference release, torchvision and timm ResNets). The prototypes and any
    classifier are left out: a warm start clusters the new data anew."""
    loaded = load_checkpoint(reference, ignore=("prototypes", "fc"), download=download)
    log.info("model.init: %s, a %s (%s layout)", reference, loaded.arch, loaded.layout)
    return loaded.model.state_dict()


__all__ = [
    "LoadedModel",
    "load_checkpoint",
    "load_linear_head",
    "detect_layout",
    "CheckpointError",
    "initial_weights",
]
