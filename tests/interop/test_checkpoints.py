"""Synthetic checkpoints in every known layout: detection, architecture inference, equality of
features with torchvision, clear errors, and refusal of pickled code."""

import pickle

import pytest
import torch
import torchvision

from swav.engine.checkpoint import UnsafeCheckpointError
from swav.interop.checkpoints import CheckpointError, detect_layout, load_checkpoint
from swav.interop.export import detectron2_names, export_model
from swav.model import build_model


def random_like(sd, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            t = torch.randn(v.shape, generator=g) * 0.1
            if k.endswith("running_var"):
                t = t.abs() + 0.5
            out[k] = t
        else:
            out[k] = v.clone()
    return out


def tv_features(arch, backbone_sd, x):
    tv = getattr(torchvision.models, arch)()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(backbone_sd, strict=False)
    with torch.no_grad():
        return tv.eval()(x)


def backbone_only(sd):
    return {k: v for k, v in sd.items() if not k.startswith(("projection_head", "prototypes"))}


@pytest.fixture(scope="module")
def rn50_sd():
    return random_like(build_model("resnet50", n_prototypes=3000).state_dict())


def test_reference_release_layout(tmp_path, rn50_sd):
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save({"module." + k: v for k, v in rn50_sd.items()}, path)
    loaded = load_checkpoint(path)
    assert loaded.layout == "reference" and loaded.arch == "resnet50"
    assert loaded.model.n_prototypes == [3000]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = loaded.model.forward_backbone(x)
    assert torch.allclose(ours, tv_features("resnet50", backbone_only(rn50_sd), x), atol=1e-5)


def test_reference_training_checkpoint_layout(tmp_path):
    sd = random_like(
        build_model("resnet18", hidden_mlp=0, output_dim=32, n_prototypes=[30, 40]).state_dict()
    )
    path = tmp_path / "ckp-10.pth"
    torch.save(
        {
            "epoch": 10,
            "state_dict": {"module." + k: v for k, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "amp": None,
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded.layout == "reference" and loaded.arch == "resnet18"
    assert loaded.model.n_prototypes == [30, 40] and loaded.model.embedding_dim == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            loaded.model.forward_backbone(x),
            tv_features("resnet18", backbone_only(sd), x),
            atol=1e-5,
        )


def test_wide_resnet_inferred(tmp_path):
    sd = random_like(
        build_model("resnet50w2", hidden_mlp=64, output_dim=16, n_prototypes=20).state_dict()
    )
    path = tmp_path / "w2.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    loaded = load_checkpoint(path)
    assert loaded.arch == "resnet50w2" and loaded.model.num_features == 4096


def test_mmselfsup_layout(tmp_path):
    model = build_model("resnet18", hidden_mlp=64, output_dim=16, n_prototypes=25)
    sd = random_like(model.state_dict())
    mm = {"backbone." + k: v for k, v in backbone_only(sd).items()}
    for src, dst in (
        ("projection_head.0", "neck.projection_neck.0"),
        ("projection_head.1", "neck.projection_neck.1"),
        ("projection_head.3", "neck.projection_neck.3"),
    ):
        for k, v in sd.items():
            if k.startswith(src + "."):
                mm[dst + k[len(src) :]] = v
    mm["head.loss_module.prototypes.weight"] = sd["prototypes.weight"]
    path = tmp_path / "mm.pth"
    torch.save({"meta": {"epoch": 200, "mmengine_version": "0.10"}, "state_dict": mm}, path)
    loaded = load_checkpoint(path)
    assert loaded.layout == "mmselfsup" and loaded.model.n_prototypes == [25]
    for k, v in sd.items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_torchvision_layout_keeps_fc(tmp_path):
    tv = torchvision.models.resnet18()
    sd = random_like(tv.state_dict())
    path = tmp_path / "tv.pth"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert loaded.layout == "torchvision" and loaded.classifier.out_features == 1000
    x = torch.randn(2, 3, 32, 32)
    tv.load_state_dict(sd)
    with torch.no_grad():
        assert torch.allclose(
            loaded.classifier(loaded.model.forward_backbone(x)), tv.eval()(x), atol=1e-5
        )


def test_layout_detection_table():
    assert detect_layout({"module.conv1.weight": 0}) == "reference"
    assert detect_layout({"state_dict": {"module.linear.weight": 0}}) == "reference-linear"
    assert detect_layout({"meta": {}, "state_dict": {"backbone.conv1.weight": 0}}) == "mmselfsup"
    assert detect_layout({"conv1.weight": 0, "fc.weight": 0}) == "torchvision"
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_layout({"encoder.weight": 0})


def test_wrong_architecture_and_missing_keys_are_clear(tmp_path, rn50_sd):
    sd = {"module." + k: v for k, v in rn50_sd.items()}
    del sd["module.layer2.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['layer2.0.conv1.weight'\]"):
        load_checkpoint(path)
    sd2 = {"module." + k: v for k, v in rn50_sd.items()}
    sd2["module.layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(sd2, path)
    with pytest.raises(CheckpointError, match="layer1.0.conv2.weight: the file has shape"):
        load_checkpoint(path)
    sd3 = {"module." + k: v for k, v in rn50_sd.items()}
    sd3["module.extra.weight"] = torch.zeros(3)
    torch.save(sd3, path)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint(path)


def test_ignore_parts(tmp_path, rn50_sd):
    sd = {"module." + k: v for k, v in backbone_only(rn50_sd).items()}
    sd["module.projection_head.0.weight"] = rn50_sd["projection_head.0.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    loaded = load_checkpoint(path, ignore=["head"])
    assert loaded.model.prototypes is None and loaded.model.projection_head is None


class Evil:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "obj": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        load_checkpoint(path)


def test_run_directory_loads(tmp_path):
    from swav.config import build_config
    from swav.engine.train import pretrain
    from tests.conftest import tiny_overrides

    pretrain(
        build_config(None, tiny_overrides(tmp_path / "r", **{"train.epochs": 1})), progress=False
    )
    loaded = load_checkpoint(tmp_path / "r")
    assert loaded.layout == "swav-run" and loaded.arch == "resnet_tiny"


def test_released_names_never_download(monkeypatch, tmp_path):
    monkeypatch.setenv("SWAV_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_checkpoint("swav_800ep")


@pytest.mark.parametrize("arch", ["resnet50", "resnet18"])
def test_export_torchvision_round_trip(tmp_path, arch):
    model = build_model(arch, hidden_mlp=32, output_dim=8, n_prototypes=10).eval()
    model.load_state_dict(random_like(model.state_dict()))
    out = tmp_path / f"{arch}.pth"
    export_model(model, out, "torchvision", {"arch": arch})
    tv = getattr(torchvision.models, arch)()
    result = tv.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert not result.unexpected_keys
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tv.eval()(x), model.forward_backbone(x), atol=1e-5)
    assert (tmp_path / f"{arch}.pth.json").exists()


def test_export_safetensors_and_swav_round_trip(tmp_path):
    from safetensors import safe_open

    model = build_model("resnet18", hidden_mlp=32, output_dim=8, n_prototypes=10).eval()
    export_model(model, tmp_path / "m.safetensors", "safetensors", {"arch": "resnet18"})
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert '"resnet18"' == f.metadata()["arch"]
        assert torch.equal(f.get_tensor("conv1.weight"), model.backbone.conv1.weight)
    export_model(model, tmp_path / "m.pt", "swav", {"arch": "resnet18"})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.layout == "swav-export"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def detectron2_reference_names() -> dict[str, tuple]:
    """Detectron2's ResNet-50 names and shapes, written out from its R-50 layout."""
    names = {"stem.conv1.weight": (64, 3, 7, 7)}
    for p in ("weight", "bias", "running_mean", "running_var"):
        names[f"stem.conv1.norm.{p}"] = (64,)
    inplanes = 64
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for j in range(blocks):
            b = f"res{stage}.{j}"
            cin = inplanes if j == 0 else width * 4
            shapes = {
                "conv1": (width, cin, 1, 1),
                "conv2": (width, width, 3, 3),
                "conv3": (width * 4, width, 1, 1),
            }
            if j == 0:
                shapes["shortcut"] = (width * 4, inplanes, 1, 1)
            for conv, shape in shapes.items():
                names[f"{b}.{conv}.weight"] = shape
                for p in ("weight", "bias", "running_mean", "running_var"):
                    names[f"{b}.{conv}.norm.{p}"] = (shape[0],)
        inplanes = width * 4
    return names


def test_detectron2_export_names_and_shapes(tmp_path):
    model = build_model("resnet50", n_prototypes=10)
    out = tmp_path / "r50.pkl"
    export_model(model, out, "detectron2", {"arch": "resnet50"})
    with open(out, "rb") as f:
        obj = pickle.load(f)
    assert obj["matching_heuristics"] is True
    got = {k: tuple(v.shape) for k, v in obj["model"].items()}
    assert got == detectron2_reference_names()
    assert "stem.conv1.norm.weight" in detectron2_names(model.backbone.state_dict())


def test_exports_hold_no_local_paths_and_say_what_they_leave_out(tmp_path, caplog):
    model = build_model("resnet18", hidden_mlp=32, output_dim=8, n_prototypes=10)
    meta = {
        "arch": "resnet18",
        "source": "/home/someone/runs/photos/checkpoint.pt",
        "pretraining": {"run_dir": "/home/someone/runs/photos", "data": {"source": "/data/x.tar"}},
    }
    with caplog.at_level("INFO"):
        export_model(model, tmp_path / "d2.pkl", "detectron2", meta)
    assert "20 num_batches_tracked counters left out" in caplog.text
    for fmt, name in (("detectron2", "d2.pkl"), ("torchvision", "tv.pth.json")):
        if fmt != "detectron2":
            export_model(model, tmp_path / "tv.pth", fmt, meta)
        raw = (tmp_path / name).read_bytes()
        assert b"/home/someone" not in raw and b"/data/" not in raw
        assert b"checkpoint.pt" in raw and b"x.tar" in raw  # by name


def test_damaged_files_are_called_damaged_not_unsafe(tmp_path):
    import argparse

    from swav.engine.checkpoint import DamagedCheckpointError, safe_load

    torch.save({"a": torch.zeros(3)}, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    files = {
        "truncated.pt": good[: len(good) // 2],
        "empty.pt": b"",
        "random.pt": b"\x8a\x11 not a checkpoint" * 20,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DamagedCheckpointError, match="damaged|empty") as err:
            safe_load(tmp_path / name)
        assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    torch.save(argparse.Namespace(a=1), tmp_path / "code.pt")  # a class to build: unsafe
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects"):
        safe_load(tmp_path / "code.pt")


@pytest.mark.parametrize("command", ["predict", "assign", "export", "eval"])
def test_every_command_taking_a_released_name_accepts_download(
    monkeypatch, tmp_path, capsys, command
):
    import urllib.error

    import torch.hub

    from swav.cli import main

    monkeypatch.setenv("SWAV_CACHE", str(tmp_path / "cache"))

    def offline(url, dst, progress=True):  # no network in tests: the download fails as offline
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    from PIL import Image

    image = str(tmp_path / "x.png")  # the images are checked first: a readable one
    Image.new("RGB", (8, 8)).save(image)
    argv = {
        "predict": ["predict", image],
        "assign": ["assign", image],
        "export": ["export", "--out", str(tmp_path / "o.pth")],
        "eval": ["eval", "knn", "--data", "digits"],
    }[command]
    assert main([*argv, "--checkpoint", "swav_800ep", "--download"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"swav {argv[0]}: error: could not download swav_800ep")
    assert "name resolution" in err and len(err.splitlines()) == 1
    assert main([*argv, "--checkpoint", "swav_800ep"]) == 2  # without: the cache only
    assert "--download" in capsys.readouterr().err
