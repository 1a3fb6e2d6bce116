import re

import pytest
import torch
import torchvision

from swav.model import BACKBONES, MultiPrototypes, Prototypes, build_backbone, build_model


def reference_keys() -> list[str]:
    """The reference release's ResNet-50 key list (REFERENCE.md, section 4), without `module.`."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    for stage, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for j in range(blocks):
            p = f"layer{stage}.{j}"
            for c in (1, 2, 3):
                keys += [f"{p}.conv{c}.weight"] + [f"{p}.bn{c}.{b}" for b in bn]
            if j == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{b}" for b in bn]
    keys += ["projection_head.0.weight", "projection_head.0.bias"]
    keys += [f"projection_head.1.{b}" for b in bn]
    keys += ["projection_head.3.weight", "projection_head.3.bias", "prototypes.weight"]
    return keys


def test_resnet50_keys_match_reference_layout():
    model = build_model("resnet50", n_prototypes=3000)
    sd = model.state_dict()
    ref = reference_keys()
    assert len(ref) == 328
    assert sorted(sd) == sorted(ref)
    assert tuple(sd["prototypes.weight"].shape) == (3000, 128)
    assert tuple(sd["projection_head.0.weight"].shape) == (2048, 2048)
    tv = set(torchvision.models.resnet50().state_dict()) - {"fc.weight", "fc.bias"}
    assert {k for k in sd if not k.startswith(("projection_head", "prototypes"))} == tv


def test_module_prefixed_state_dict_loads_exactly():
    src = build_model("resnet18", hidden_mlp=64, output_dim=16, n_prototypes=10)
    wrapped = {"module." + k: v for k, v in src.state_dict().items()}
    assert len(wrapped) == len(src.state_dict())
    dst = build_model("resnet18", hidden_mlp=64, output_dim=16, n_prototypes=10)
    stripped = {re.sub(r"^module\.", "", k): v for k, v in wrapped.items()}
    result = dst.load_state_dict(stripped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    # a load with the prefix still on is refused (nothing would match silently)
    with pytest.raises(RuntimeError):
        dst.load_state_dict(wrapped, strict=True)


def test_multi_prototype_keys_and_outputs():
    model = build_model("resnet18", hidden_mlp=0, output_dim=8, n_prototypes=[5, 7])
    assert isinstance(model.prototypes, MultiPrototypes)
    keys = set(model.state_dict())
    assert {"prototypes.prototypes0.weight", "prototypes.prototypes1.weight"} <= keys
    assert "projection_head.weight" in keys  # hidden_mlp=0: a single linear layer
    out = model.eval()([torch.randn(2, 3, 32, 32)])
    assert [s.shape[1] for s in out.scores] == [5, 7]


def test_no_head():
    model = build_model("resnet18", output_dim=0, n_prototypes=0).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.embeddings.shape == (2, 512) and out.scores == []


def test_grouped_forward_equals_per_crop_forward():
    torch.manual_seed(0)
    model = build_model("resnet18", hidden_mlp=32, output_dim=16, n_prototypes=12).eval()
    crops = [torch.randn(3, 3, 64, 64) for _ in range(2)] + [
        torch.randn(3, 3, 32, 32) for _ in range(3)
    ]
    grouped = model(crops)
    with torch.no_grad():
        singles = [model(c) for c in crops]
    emb = torch.cat([s.embeddings for s in singles])
    scores = torch.cat([s.scores[0] for s in singles])
    assert torch.allclose(grouped.embeddings, emb, atol=1e-5)
    assert torch.allclose(grouped.scores[0], scores, atol=1e-5)


def test_prototypes_unit_norm_after_training_forward():
    model = build_model("resnet18", hidden_mlp=0, output_dim=8, n_prototypes=6)
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.train()
    out = model([torch.randn(4, 3, 32, 32)])
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(6), atol=1e-6)
    # embeddings are unit-norm, so scores are cosines
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(4), atol=1e-5)
    assert out.scores[0].abs().max() <= 1 + 1e-5


def test_prototypes_initialised_unit_norm():
    p = Prototypes(16, 9)
    assert torch.allclose(p.weight.norm(dim=1), torch.ones(9), atol=1e-6)


@pytest.mark.parametrize("name,dim", [("resnet50w2", 4096), ("resnet34", 512)])
def test_widths(name, dim):
    assert build_backbone(name).num_features == dim


def test_small_stem_keeps_resolution():
    stem = build_backbone("resnet18", small_stem=True)
    assert stem.conv1.kernel_size == (3, 3) and isinstance(stem.maxpool, torch.nn.Identity)
    maps = stem.forward_stages(torch.randn(1, 3, 32, 32))
    assert maps[0].shape[-1] == 32 and maps[-1].shape[-1] == 4


def test_resnet_matches_torchvision_features():
    ours = build_backbone("resnet18").eval()
    tv = torchvision.models.resnet18().eval()
    tv.fc = torch.nn.Identity()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet50w2"):
        build_backbone("resnet49")
    assert "resnet50w5" in BACKBONES


def test_timm_backbone_by_name():
    pytest.importorskip("timm")
    model = build_model("timm:resnet18", hidden_mlp=16, output_dim=8, n_prototypes=5).eval()
    out = model([torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)])
    assert out.embeddings.shape == (4, 8) and out.scores[0].shape == (4, 5)
    assert model.num_features == 512
