from pathlib import Path

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
