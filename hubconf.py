"""torch.hub entry points: ``torch.hub.load("<owner>/swav", "resnet50", weights=PATH_OR_URL)``.

Each entry builds a SwAV model (backbone, projection head, prototypes). ``weights`` is a local
file (any layout ``swav.load_checkpoint`` knows), a URL (downloaded by torch.hub into its cache,
then loaded with ``weights_only=True``), or a released name such as ``"swav_800ep"``.
"""

dependencies = ["torch", "torchvision"]

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from torch import nn  # noqa: E402

from swav.model import build_model as _build  # noqa: E402


def _weights(weights, ignore=(), progress=True):
    from swav.interop.checkpoints import load_checkpoint

    if isinstance(weights, str) and weights.startswith(("http://", "https://")):
        from torch.hub import download_url_to_file, get_dir

        target = Path(get_dir()) / "checkpoints" / Path(weights).name
        if not target.exists():
            from swav.interop.checkpoints import CheckpointError

            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                download_url_to_file(weights, str(target), progress=progress)
            except OSError as e:  # URLError and friends: offline, a proxy, a wrong address
                reason = getattr(e, "reason", None) or e
                raise CheckpointError(
                    f"could not download {weights} ({reason}): without internet, fetch the file "
                    "on another machine and pass its local path as weights="
                ) from e
        weights = str(target)
    return load_checkpoint(weights, ignore=ignore, download=True)


def _head_shape(model):
    """(hidden_mlp, output_dim, n_prototypes) of a built model."""
    head = model.projection_head
    if head is None:
        hidden, out = 0, 0
    elif isinstance(head, nn.Linear):
        hidden, out = 0, head.out_features
    else:
        hidden, out = head[0].out_features, head[-1].out_features
    return {"hidden_mlp": hidden, "output_dim": out, "n_prototypes": model.n_prototypes}


def _entry(arch, weights=None, explicit=(), **kwargs):
    """The model of ``arch``: built from ``kwargs``, or the one in ``weights``, which must be
    of ``arch`` and agree with every setting given explicitly."""
    if weights is None:
        return _build(arch, **kwargs)
    from swav.errors import UsageError

    loaded = _weights(weights, kwargs.pop("ignore", ()))
    if loaded.arch != arch:
        raise UsageError(
            f"the weights are a {loaded.arch} checkpoint, not {arch}: load them with "
            f"torch.hub.load(..., {loaded.arch!r}, weights=...)"
        )
    unknown = sorted(set(kwargs) - {"hidden_mlp", "output_dim", "n_prototypes"})
    if unknown:
        raise UsageError(
            f"with weights the model's shape comes from the file; {', '.join(unknown)} "
            "cannot be set (ignore=[...] leaves parts out)"
        )
    shape = _head_shape(loaded.model)
    for key in explicit:
        want = kwargs[key]
        if key == "n_prototypes":
            want = [want] if isinstance(want, int) else list(want)
        if shape[key] != want:
            raise UsageError(f"{key}={kwargs[key]} was asked for, the weights have {shape[key]}")
    return loaded.model


def _given(kwargs):
    return tuple(k for k in kwargs if k in ("hidden_mlp", "output_dim", "n_prototypes"))


def resnet50(weights=None, **kwargs):
    """SwAV ResNet-50 (2048-d features, projection 2048-128, 3000 prototypes by default)."""
    return _entry("resnet50", weights, _given(kwargs), **kwargs)


def resnet50w2(weights=None, **kwargs):
    """SwAV ResNet-50 x2 (4096-d features); the release uses hidden_mlp=8192."""
    given = _given(kwargs)
    kwargs.setdefault("hidden_mlp", 8192)
    return _entry("resnet50w2", weights, given, **kwargs)


def resnet50w4(weights=None, **kwargs):
    """SwAV ResNet-50 x4 (8192-d features)."""
    given = _given(kwargs)
    kwargs.setdefault("hidden_mlp", 8192)
    return _entry("resnet50w4", weights, given, **kwargs)


def resnet50w5(weights=None, **kwargs):
    """SwAV ResNet-50 x5 (10240-d features)."""
    given = _given(kwargs)
    kwargs.setdefault("hidden_mlp", 10240)
    return _entry("resnet50w5", weights, given, **kwargs)


def resnet18(weights=None, **kwargs):
    """SwAV ResNet-18 (512-d features)."""
    return _entry("resnet18", weights, _given(kwargs), **kwargs)
