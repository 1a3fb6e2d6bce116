"""torch.hub entry points: ``torch.hub.load("<owner>/swav", "resnet50", weights=PATH_OR_URL)``.

Each entry builds a SwAV model (backbone, projection head, prototypes). ``weights`` is a local
file (any layout ``swav.load_checkpoint`` knows), a URL (downloaded by torch.hub into its cache,
then loaded with ``weights_only=True``), or a released name such as ``"swav_800ep"``.
"""

dependencies = ["torch", "torchvision"]

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from swav.model import build_model as _build  # noqa: E402


def _weights(weights, progress=True):
    from swav.interop.checkpoints import load_checkpoint

    if isinstance(weights, str) and weights.startswith(("http://", "https://")):
        from torch.hub import download_url_to_file, get_dir

        target = Path(get_dir()) / "checkpoints" / Path(weights).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(weights, str(target), progress=progress)
        weights = str(target)
    return load_checkpoint(weights, download=True).model


def _entry(arch, weights=None, **kwargs):
    if weights is not None:
        return _weights(weights)
    return _build(arch, **kwargs)


def resnet50(weights=None, **kwargs):
    """SwAV ResNet-50 (2048-d features, projection 2048-128, 3000 prototypes by default)."""
    return _entry("resnet50", weights, **kwargs)


def resnet50w2(weights=None, **kwargs):
    """SwAV ResNet-50 x2 (4096-d features); the release uses hidden_mlp=8192."""
    kwargs.setdefault("hidden_mlp", 8192)
    return _entry("resnet50w2", weights, **kwargs)


def resnet50w4(weights=None, **kwargs):
    """SwAV ResNet-50 x4 (8192-d features)."""
    kwargs.setdefault("hidden_mlp", 8192)
    return _entry("resnet50w4", weights, **kwargs)


def resnet50w5(weights=None, **kwargs):
    """SwAV ResNet-50 x5 (10240-d features)."""
    kwargs.setdefault("hidden_mlp", 10240)
    return _entry("resnet50w5", weights, **kwargs)


def resnet18(weights=None, **kwargs):
    """SwAV ResNet-18 (512-d features)."""
    return _entry("resnet18", weights, **kwargs)
