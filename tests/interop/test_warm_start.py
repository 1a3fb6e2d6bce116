"""``model.init``: a new run starts from weights trained elsewhere, in the layouts users bring
(the reference release, torchvision and timm files, this project's runs); the backbone is loaded,
the prototypes start anew, another architecture is refused in one line."""

import pytest
import torch
import torchvision

from swav.cli import main
from swav.engine.checkpoint import safe_load
from tests.conftest import tiny_overrides


def _resnet18_overrides(run, init, **extra):
    over = {
        "model.arch": "resnet18",
        "model.small_stem": False,
        "multicrop.sizes": "[32,16]",
        "model.init": str(init),
        "train.epochs": 1,
        "train.iters_per_epoch": 1,
        "optim.base_lr": 1e-9,  # one step that moves nothing: the start can be read back
        "optim.final_lr": 1e-12,
        **extra,
    }
    return ["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(run, **over)]


def _randomized(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(
                    torch.randn(t.shape, generator=g) * 0.05 + (1.0 if "running_var" in name else 0)
                )
    return module


def _start_of(run):
    """The weights the run started from: after one step at a learning rate of 1e-9, its
    parameters (BatchNorm statistics left out: a training step updates them)."""
    sd = safe_load(run / "checkpoint.pt")["model"]
    return {k: v for k, v in sd.items() if "running_" not in k and "num_batches" not in k}


def same(a, b):
    return torch.allclose(a, b, atol=1e-6, rtol=0)


def _reference_release(path):
    """The reference main_swav.py checkpoint: DDP's ``module.`` prefix, torchvision's trunk
    names, projection_head and prototypes, inside ``state_dict``."""
    tv = _randomized(torchvision.models.resnet18())
    sd = {f"module.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    head = _randomized(torch.nn.Sequential(torch.nn.Linear(512, 32), torch.nn.BatchNorm1d(32)))
    sd.update({f"module.projection_head.{k}": v for k, v in head.state_dict().items()})
    sd["module.projection_head.3.weight"] = torch.randn(16, 32)
    sd["module.projection_head.3.bias"] = torch.randn(16)
    sd["module.prototypes.weight"] = torch.randn(3000, 16)
    torch.save({"epoch": 800, "state_dict": sd, "optimizer": {}}, path)
    return tv.state_dict()


def _torchvision_file(path):
    tv = _randomized(torchvision.models.resnet18(), seed=1)
    torch.save(tv.state_dict(), path)
    return tv.state_dict()


def _timm_file(path):
    timm = pytest.importorskip("timm")
    model = _randomized(timm.create_model("resnet18", pretrained=False), seed=2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.state_dict()


@pytest.mark.parametrize(
    "writer,name",
    [
        (_reference_release, "swav_800ep.pth.tar"),
        (_torchvision_file, "rn18.pth"),
        (_timm_file, "rn18.safetensors"),
    ],
)
def test_released_layouts_start_a_run(tmp_path, capsys, writer, name):
    trunk = writer(tmp_path / name)
    run = tmp_path / "run"
    assert main(_resnet18_overrides(run, tmp_path / name)) == 0
    start = _start_of(run)
    for k, v in trunk.items():
        if k in start and not k.startswith("fc."):
            assert same(start[k], v), k
    assert "layer4.1.conv2.weight" in start
    assert start["prototypes.weight"].shape == (20, 16)  # new prototypes for the new data


def test_a_run_continues_another_runs_backbone_and_head_with_new_prototypes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(first)]) == 0
    trained = safe_load(first / "checkpoint.pt")["model"]
    still = {"optim.base_lr": 1e-9, "optim.final_lr": 1e-12, "train.epochs": 1}
    over = tiny_overrides(second, **{"model.init": str(first), "train.seed": 5, **still})
    assert main(["pretrain", "--preset", "defaults", "--no-progress", *over]) == 0
    start = _start_of(second)
    for k, v in trained.items():
        if k in start and not k.startswith("prototypes"):  # the backbone and projection head
            assert same(start[k], v), k
    assert not same(start["prototypes.weight"], trained["prototypes.weight"])


def test_the_small_stem_starts_anew_and_is_named(tmp_path, caplog):
    trunk = _torchvision_file(tmp_path / "rn18.pth")
    run = tmp_path / "run"
    argv = _resnet18_overrides(run, tmp_path / "rn18.pth", **{"model.small_stem": True})
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    assert "new: conv1.weight" in caplog.text
    start = _start_of(run)
    assert same(start["layer4.1.conv2.weight"], trunk["layer4.1.conv2.weight"])


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path, capsys):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "rn34.pth")
    run = tmp_path / "run"
    assert main(_resnet18_overrides(run, tmp_path / "rn34.pth")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not this run's model.arch" in err[0]
    assert not (run / "checkpoint.pt").exists()


def test_the_data_recipe_keeps_the_architecture_of_the_weights_it_starts_from(
    tmp_path, image_folder, capsys
):
    first, run = tmp_path / "first", tmp_path / "second"
    assert main(["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(first)]) == 0
    argv = ["pretrain", "--data", str(image_folder), "--run-dir", str(run), "--no-progress"]
    short = ["train.epochs=1", "data.workers=0", "train.precision=fp32"]
    assert main([*argv, f"model.init={first}", *short]) == 0
    out = capsys.readouterr().out
    assert "model.arch = resnet_tiny  (as given (model.arch, or the weights model.init" in out
    assert "arch: resnet_tiny" in (run / "config.yaml").read_text()
