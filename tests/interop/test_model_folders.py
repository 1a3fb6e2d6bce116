"""Model folders (hub repositories, timm exports) and ONNX: written, then loaded back the way
their users load them (swav names, timm.create_model, the Hugging Face cache offline,
onnxruntime), compared with the model they came from."""

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swav.cli import main
from swav.config import build_config
from swav.interop.checkpoints import load_checkpoint
from swav.interop.model_folder import CARD, CONFIG, HEADS, WEIGHTS, HubError, split_hub_name
from swav.publish import reproduce_command
from tests.conftest import SHARED, tiny_overrides

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def r18_run(tmp_path_factory):
    """A one-epoch ResNet-18 run at 32 px (a backbone timm builds), with an evaluation."""
    d = tmp_path_factory.mktemp("r18")
    run = d / "run"
    over = tiny_overrides(run, **{"model.arch": "resnet18", "model.small_stem": False})
    over = [o for o in over if not o.startswith("multicrop.sizes")]
    over += ["multicrop.sizes=[32,16]", "train.epochs=1", "train.iters_per_epoch=2"]
    assert main(["pretrain", "--preset", "demo", *over, "--no-progress"]) == 0
    knn = ["eval", "knn", "--checkpoint", str(run), "--no-progress", "--limit", "64"]
    assert main(knn) == 0
    return run


def same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k, v in sa.items():
        assert torch.equal(v, sb[k]), k


def hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """``folder`` laid out as huggingface_hub keeps a downloaded repository: blobs named by
    their hash, a snapshot of links to them, refs/main naming the snapshot."""
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for f in folder.iterdir():
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (base / "blobs" / digest).write_bytes(data)
        (snap / f.name).symlink_to(Path("../../blobs") / digest)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    return snap


def test_a_pushed_folder_loads_back_through_swav_timm_and_the_hub_cache(
    r18_run, tmp_path, monkeypatch, capsys
):
    timm = pytest.importorskip("timm")
    pytest.importorskip("huggingface_hub")
    folder = tmp_path / "repo"
    push = ["hub", "push", str(r18_run), "--repo", "someone/swav-r18", "--out", str(folder)]
    assert main([*push, "--dry-run"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == {CONFIG, WEIGHTS, HEADS, CARD, "loss.png"}
    config = json.loads((folder / CONFIG).read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["num_classes"] == 0
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]  # the demo's
    assert str(tmp_path) not in (folder / CONFIG).read_text()  # no local path travels

    original = load_checkpoint(r18_run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = original.model.forward_backbone(x)
    # a local clone of the repository, by folder
    clone = load_checkpoint(folder)
    same_model(clone.model, original.model)
    assert clone.pretraining["multicrop"]["sizes"] == [32, 16]
    assert clone.eval_transform().size == 32
    # timm, from the folder
    m = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(m(x), want, atol=1e-4)
    # the Hugging Face cache, offline
    hub_cache(tmp_path / "hf", "someone/swav-r18", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cached = load_checkpoint("hf-hub:someone/swav-r18")
    same_model(cached.model, original.model)
    assert cached.meta["source"] == "hf-hub:someone/swav-r18"
    m = timm.create_model("hf-hub:someone/swav-r18", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(m(x), want, atol=1e-4)
    # a command takes the name wherever it takes a checkpoint
    out = tmp_path / "f.npy"
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    embed = ["embed", str(images), "--checkpoint", "hf-hub:someone/swav-r18", "--out", str(out)]
    assert main([*embed, "--no-progress"]) == 0
    assert np.load(out).shape == (3, 512)
    # not cached: one clear error, saying how to get it
    with pytest.raises(HubError, match="not in the Hugging Face cache.*--download"):
        load_checkpoint("hf-hub:someone/other")


def test_the_model_card_says_what_the_run_did_and_how_to_redo_it(r18_run, tmp_path):
    pytest.importorskip("huggingface_hub")
    folder = tmp_path / "repo"
    push = ["hub", "push", str(r18_run), "--repo", "someone/swav-r18", "--out", str(folder)]
    assert main([*push, "--dry-run", "--license", "mit"]) == 0
    card = (folder / CARD).read_text()
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: mit" in front
    assert "pipeline_tag: image-feature-extraction" in front
    for part in ("## Training", "## Curves", "## Evaluation", "## Reproduce", "![loss](loss.png)"):
        assert part in card, part
    assert 'timm.create_model("hf-hub:someone/swav-r18", pretrained=True)' in card
    assert "k=20" in card or "kNN" in card  # the evaluation's result
    epochs = [json.loads(x) for x in (r18_run / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in epochs if e.get("kind") == "epoch"][-1]
    assert f"| {last['epoch']} | {last['loss']:.4f} |" in card
    # the reproduce command rebuilds the run's settings (the run directory aside)
    command = card.split("## Reproduce")[1].split("```bash")[1].split("```")[0]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:4] == ["swav", "pretrain", "--preset", "defaults"]
    rebuilt = build_config(None, words[4:]).to_dict()
    recorded = build_config(None, []).to_dict()
    ran = load_checkpoint(r18_run).pretraining
    for section, values in ran.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert rebuilt[section][key] == value, (section, key)
    assert rebuilt != recorded


def test_reproduce_names_local_data_by_name_only():
    cfg = build_config("demo", ["data.source=/home/someone/photos/holiday"]).to_dict()
    text = reproduce_command(cfg)
    assert "data.source=holiday" in text and "/home/someone" not in text


def test_hub_names_are_checked_before_any_work(tmp_path, capsys):
    for bad in ("hf-hub:", "hf-hub:onlyname", "hf-hub:a/b/c", "hf-hub:/x"):
        with pytest.raises(Exception, match="hf-hub:OWNER/NAME"):
            split_hub_name(bad)
    assert split_hub_name("hf-hub:a/b@v1") == ("a/b", "v1")
    assert main(["hub", "push", str(tmp_path), "--repo", "a/b", "--dry-run"]) == 2
    assert "--out" in capsys.readouterr().err


def test_push_uploads_the_folder_it_wrote(r18_run, tmp_path, monkeypatch, capsys):
    """The upload itself goes through huggingface_hub's HfApi; here a stand-in records what it
    was given (no network in tests): the repository, then the complete folder."""
    hub = pytest.importorskip("huggingface_hub")
    seen: dict = {}

    class Api:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            seen["repo"], seen["private"] = repo_id, private

        def upload_folder(self, repo_id, folder_path, commit_message):
            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub, "HfApi", Api)
    args = ["hub", "push", str(r18_run), "--repo", "me/m", "--private"]
    assert main(args) == 0
    assert seen == {
        "token": None,  # HF_TOKEN or the saved login, as huggingface_hub finds it
        "repo": "me/m",
        "private": True,
        "files": sorted([CONFIG, WEIGHTS, HEADS, CARD, "loss.png"]),
    }
    assert "pushed me/m: https://hub/me/m/commit/1" in capsys.readouterr().out

    class Refused(Api):
        def upload_folder(self, **kw):
            raise OSError("401 Unauthorized")

    monkeypatch.setattr(hub, "HfApi", Refused)
    keep = tmp_path / "kept"
    assert main([*args, "--out", str(keep)]) == 2
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and str(keep) in err
    assert (keep / WEIGHTS).is_file()  # nothing lost: the folder stays for a later upload
    # that folder now has files: writing into it again needs --force, and is refused before
    # anything is loaded or uploaded
    monkeypatch.setattr(hub, "HfApi", None)
    assert main([*args, "--out", str(keep)]) == 2
    err = capsys.readouterr().err
    assert "has files in it" in err and "--force" in err


def test_timm_export_is_a_folder_timm_loads_by_name(r18_run, tmp_path, capsys):
    timm = pytest.importorskip("timm")
    out = tmp_path / "timm-r18"
    assert (
        main(["export", "--checkpoint", str(r18_run), "--format", "timm", "--out", str(out)]) == 0
    )
    assert {p.name for p in out.iterdir()} == {CONFIG, WEIGHTS}
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in capsys.readouterr().out
    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert m.pretrained_cfg["input_size"] == (3, 32, 32) or m.pretrained_cfg["input_size"] == [
        3,
        32,
        32,
    ]
    original = load_checkpoint(r18_run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), original.model.forward_backbone(x), atol=1e-4)
    # again into the same folder: only with --force; a file name is refused with the reason
    base = ["export", "--checkpoint", str(r18_run), "--format", "timm"]
    assert main([*base, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has files in it" in err and "--force" in err
    assert main([*base, "--out", str(out), "--force"]) == 0
    assert main([*base, "--out", str(tmp_path / "r18.pth")]) == 2
    assert "writes a folder" in capsys.readouterr().err


def test_formats_that_cannot_hold_the_model_say_why(tmp_path, capsys):
    run = tmp_path / "tiny"
    assert main(["pretrain", "--preset", "demo", *tiny_overrides(run), "--no-progress"]) == 0
    for fmt in ("timm", "torchvision", "detectron2"):
        out = tmp_path / ("t" if fmt == "timm" else f"t.{fmt}")
        assert main(["export", "--checkpoint", str(run), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{fmt} has no resnet_tiny backbone" in err and "safetensors" in err
        assert not out.exists()
    # a hub folder holds any backbone: swav loads it, the card says timm cannot
    folder = tmp_path / "repo"
    assert (
        main(["hub", "push", str(run), "--repo", "a/tiny", "--out", str(folder), "--dry-run"]) == 0
    )
    config = json.loads((folder / CONFIG).read_text())
    assert "architecture" not in config and config["swav"]["timm"] is False
    assert "library_name: swav" in (folder / CARD).read_text()
    same_model(load_checkpoint(folder).model, load_checkpoint(run).model)


def real_images(n: int, size: int) -> torch.Tensor:
    """``n`` Imagenette validation photos (one per class first), resized and normalised as
    the model was trained."""
    from swav.data.images import load_rgb
    from swav.data.sources import open_source
    from swav.data.transforms import EvalTransform

    archive = SHARED / "imagenette-96.tar.gz"
    if not archive.exists():
        pytest.skip(f"no real images: {archive} is missing")
    src = open_source(str(archive), split="val")
    picks = np.linspace(0, len(src) - 1, n).astype(int)
    tf = EvalTransform.for_size(size, [0.5] * 3, [0.5] * 3)
    return torch.stack([tf(load_rgb(src[int(i)][0])) for i in picks])


@pytest.mark.parametrize("heads", [False, True], ids=["backbone", "whole-model"])
def test_onnx_export_matches_pytorch_on_real_photos(r18_run, tmp_path, capsys, heads):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from swav.interop.onnx import compare_with_torch

    out = tmp_path / "m.onnx"
    cmd = ["export", "--checkpoint", str(r18_run), "--format", "onnx", "--out", str(out)]
    assert main([*cmd, *(["--heads"] if heads else [])]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["features", "embeddings", "scores"] if heads else ["features"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_size"]) == [3, 32, 32]
    model = load_checkpoint(r18_run).model
    for n, size in ((8, 32), (3, 64), (1, 32)):  # the batch (and image size) are free
        diff = compare_with_torch(model, out, real_images(n, size), heads)
        print(
            f"onnx {'whole model' if heads else 'backbone'}: {n} photos at {size} px, "
            f"max |difference| {diff:.2e}"
        )
        assert diff <= 1e-4
    if heads:
        got = session.run(None, {"images": real_images(4, 32).numpy()})
        assert got[1].shape == (4, 16) and got[2].shape == (4, 20)
        assert np.allclose(np.linalg.norm(got[1], axis=1), 1, atol=1e-5)


def test_heads_are_only_for_onnx(r18_run, tmp_path, capsys):
    cmd = ["export", "--checkpoint", str(r18_run), "--format", "safetensors", "--heads"]
    assert main([*cmd, "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--heads is for --format onnx" in capsys.readouterr().err


def test_a_folder_without_heads_loads_as_a_backbone(r18_run, tmp_path):
    out = tmp_path / "f"
    assert (
        main(["export", "--checkpoint", str(r18_run), "--format", "timm", "--out", str(out)]) == 0
    )
    loaded = load_checkpoint(out)
    assert loaded.model.prototypes is None and loaded.model.projection_head is None
    shutil.rmtree(out)
