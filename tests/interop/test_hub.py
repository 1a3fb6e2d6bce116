from pathlib import Path

import pytest
import torch

from swav.model import build_model

ROOT = Path(__file__).resolve().parents[2]


def test_hub_entry_points_build_and_load(tmp_path):
    m = torch.hub.load(
        str(ROOT), "resnet18", source="local", n_prototypes=7, hidden_mlp=16, output_dim=8
    )
    assert m.n_prototypes == [7]
    src = build_model("resnet18", hidden_mlp=16, output_dim=8, n_prototypes=7)
    path = tmp_path / "w.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    loaded = torch.hub.load(str(ROOT), "resnet18", source="local", weights=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_hub_weights_must_match_the_entry_and_its_settings(tmp_path):
    import pytest

    from swav.errors import UsageError

    src = build_model("resnet18", hidden_mlp=16, output_dim=8, n_prototypes=7)
    path = tmp_path / "w.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)

    def load(entry, **kw):
        return torch.hub.load(str(ROOT), entry, source="local", weights=str(path), **kw)

    with pytest.raises(UsageError, match="a resnet18 checkpoint, not resnet50"):
        load("resnet50")
    with pytest.raises(UsageError, match="n_prototypes=3000 was asked for, the weights have"):
        load("resnet18", n_prototypes=3000)
    with pytest.raises(UsageError, match="small_stem cannot be set"):
        load("resnet18", small_stem=True)
    assert load("resnet18", n_prototypes=7, output_dim=8).n_prototypes == [7]
    assert load("resnet18", ignore=["prototypes"]).prototypes is None


def test_hub_weights_from_an_unreachable_url_are_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    from swav.interop.checkpoints import CheckpointError

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match="could not download https://example.org/w.pth"):
        torch.hub.load(str(ROOT), "resnet18", source="local", weights="https://example.org/w.pth")
