"""Bad input from a user ends as one line ``swav <command>: error: ...`` and exit code 2, before
any work is lost or any result is made up; never a traceback."""

import io
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from swav.cli import main
from swav.config import build_config
from swav.engine.train import pretrain
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished tiny run, an exported backbone, good and bad images and archives."""
    d = tmp_path_factory.mktemp("errors")
    pretrain(build_config(None, tiny_overrides(d / "run", **{"train.epochs": 1})), progress=False)
    export = ["export", "--checkpoint", str(d / "run"), "--format", "safetensors"]
    assert main([*export, "--out", str(d / "backbone.safetensors")]) == 0
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (d / "labelled" / c).mkdir(parents=True)
        for i in range(3):
            img = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
            img.save(d / "labelled" / c / f"{i}.png")
    (d / "flat").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            d / "flat" / f"{i}.png"
        )
    for split in ("train", "val"):  # an unlabelled tree: one folder level above the images
        (d / "nested" / split / "a" / "b").mkdir(parents=True)
        for i in range(3):
            img = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
            img.save(d / "nested" / split / "a" / "b" / f"{i}.png")
    (d / "all_corrupt").mkdir()
    for i in range(8):
        (d / "all_corrupt" / f"{i}.jpg").write_bytes(
            rng.integers(0, 255, 300, dtype=np.uint8).tobytes()
        )
    good = (d / "labelled" / "a" / "0.png").read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "random.jpg").write_bytes(rng.integers(0, 255, 400, dtype=np.uint8).tobytes())
    (d / "a_file").write_text("not a folder")
    (d / "bad.yaml").write_text("train:\n  epochs: [1,\n model: x: y\n")
    _archives(d)
    return d


def _archives(d):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted((d / "labelled").rglob("*.png")):
            tf.add(p, arcname=str(p.relative_to(d)))
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        fourth = tf.getmembers()[3].offset
    (d / "cut_at_header.tar").write_bytes(whole[: fourth + 100])
    (d / "cut_at_member.tar").write_bytes(whole[:fourth])
    gz = io.BytesIO()
    with tarfile.open(fileobj=gz, mode="w:gz") as tf:
        tf.add(d / "labelled", arcname="labelled")
    (d / "truncated.tar.gz").write_bytes(gz.getvalue()[: len(gz.getvalue()) // 2])


CASES = {
    "preset with a YAML syntax error": (
        ["pretrain", "--preset", "{d}/bad.yaml", "--run-dir", "{t}/r"],
        "bad.yaml: not valid YAML at line 3",
    ),
    "unknown backbone": (
        ["pretrain", "--preset", "demo", "model.arch=resnet999", "--run-dir", "{t}/r"],
        "unknown backbone 'resnet999'",
    ),
    "every training image unreadable": (
        ["pretrain", "--preset", "demo", "data.source={d}/all_corrupt", "train.batch_size=4"]
        + ["--run-dir", "{t}/r"],
        "none of the images of the first 2 batches could be read",
    ),
    "run directory is a file": (
        ["pretrain", "--preset", "demo", "--run-dir", "{d}/a_file"],
        "is a file, not a folder",
    ),
    "run directory below a file": (
        ["pretrain", "--preset", "demo", "--run-dir", "{d}/a_file/run"],
        "is a file, not a folder",
    ),
    "another network with --allow-config-change": (
        ["pretrain", "--run-dir", "{t}/copy", "--allow-config-change", "model.hidden_mlp=64"],
        "another network (model.hidden_mlp: 32 -> 64)",
    ),
    "a bare state dict in the run directory": (
        ["pretrain", "--run-dir", "{t}/bare", "--allow-config-change"],
        "is not a training checkpoint",
    ),
    "assign on unreadable images and a folder": (
        [
            "assign",
            *("{d}/empty.jpg", "{d}/truncated.png", "{d}/random.jpg", "{d}/flat", "{d}/no.jpg"),
            "--checkpoint",
            "{d}/run",
        ],
        "5 of 5 images could not be read: {d}/empty.jpg (empty file); {d}/truncated.png",
    ),
    "predict on an unreadable image": (
        ["predict", "{d}/random.jpg", "--checkpoint", "{d}/run"],
        "1 of 1 images could not be read",
    ),
    "assign with a backbone-only checkpoint": (
        ["assign", "{d}/flat/0.png", "--checkpoint", "{d}/backbone.safetensors"],
        "no prototypes",
    ),
    "eval cluster with a backbone-only checkpoint": (
        ["eval", "cluster", "--checkpoint", "{d}/backbone.safetensors", "--data", "digits"],
        "no prototypes",
    ),
    "eval knn on a folder without classes": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "{d}/flat"],
        "has no 'train' sub-folder",
    ),
    "eval knn on a nested unlabelled tree": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "{d}/nested", "--k", "2"],
        "has one class ('a')",
    ),
    "eval knn with a test split that is not there": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "{d}/nested", "--test-split", "test"],
        "no 'test' sub-folder",
    ),
    "eval knn with a negative k": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "digits", "--k", "-3"],
        "argument --k: '-3' is not a whole number from 1",
    ),
    "eval result below a file": (
        [
            "eval",
            "knn",
            "--checkpoint",
            "{d}/run",
            "--data",
            "digits",
            "--out",
            "{d}/a_file/x.json",
        ],
        "is a file, not a folder",
    ),
    "a tar archive cut inside a header": (
        ["embed", "{d}/cut_at_header.tar", "--checkpoint", "{d}/run", "--out", "{t}/e.npy"],
        "cut_at_header.tar is damaged",
    ),
    "a tar archive cut between members": (
        ["embed", "{d}/cut_at_member.tar", "--checkpoint", "{d}/run", "--out", "{t}/e.npy"],
        "without the end marker",
    ),
    "a truncated .tar.gz": (
        ["pretrain", "--data", "{d}/truncated.tar.gz", "--run-dir", "{t}/r"],
        "truncated.tar.gz is damaged",
    ),
    "a torchvision dataset offline": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "cifar10", "--download-data"],
        "could not download cifar10",
    ),
    "a torchvision dataset not downloaded": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "cifar10"],
        "--download-data when evaluating",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_with_exit_code_2(case, files, tmp_path, capsys, monkeypatch):
    import shutil

    import torchvision.datasets as tvd

    def offline(root, train=True, download=False, **kw):
        if download:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(tvd, "CIFAR10", offline)  # never downloads, whatever the network
    shutil.copytree(files / "run", tmp_path / "copy")
    (tmp_path / "bare").mkdir()
    ck = torch.load(files / "run" / "checkpoint.pt", weights_only=False)
    torch.save(ck["model"], tmp_path / "bare" / "checkpoint.pt")
    argv, words = CASES[case]
    argv = [a.format(d=files, t=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"swav {argv[0]}: error:"), err
    assert words.format(d=files) in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # nothing trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu(tmp_path, capsys):
    assert (
        main(["pretrain", "--preset", "demo", "train.device=cuda", "--run-dir", str(tmp_path)]) == 2
    )
    assert "no usable CUDA GPU; use train.device=cpu" in capsys.readouterr().err


def test_readable_images_get_results_and_the_others_an_error(files, capsys):
    argv = ["assign", str(files / "flat" / "0.png"), str(files / "empty.jpg"), "--checkpoint"]
    assert main([*argv, str(files / "run")]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{files / 'flat' / '0.png'}\tprototype ")
    assert len(out.strip().splitlines()) == 1
    assert "1 of 2 images could not be read" in err and "empty.jpg (empty file)" in err


def test_overrides_may_follow_options(tmp_path):
    from swav.cli import build_parser

    args, extra = build_parser("pretrain").parse_known_args(
        ["pretrain", "--data", "x", "a.b=1", "--run-dir", "r", "c.d=2"]
    )
    assert args.overrides == ["a.b=1"] and extra == ["c.d=2"]  # what argparse alone does
    run = tmp_path / "r"
    argv = ["pretrain", "--preset", "demo", "--run-dir", str(run), *tiny_overrides(run)[:-1]]
    argv.insert(3, "train.seed=5")  # an override between options
    assert main(argv) == 0
    assert "seed: 5" in (run / "config.yaml").read_text()
