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
    torch.save({"weight": torch.randn(2, 256), "bias": torch.zeros(2)}, d / "head.pt")
    (d / "one_class.txt").write_text("cat\n")


CASES = {
    # the cases of the reliability report, each by name
    "eval --out the run's own checkpoint": (
        ["eval", "knn", "--checkpoint", "{t}/copy", "--data", "digits", "--out"]
        + ["{t}/copy/checkpoint.pt"],
        "is a run's own file",
    ),
    "eval --out an existing file without --force": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "digits", "--out", "{d}/a_file"],
        "a_file exists: choose another output, or pass --force",
    ),
    "an output that is a device": (
        ["export", "--checkpoint", "{d}/run", "--format", "swav", "--out", "/dev/full", "--force"],
        "is not a regular file",
    ),
    "export --out a folder with --force": (
        ["export", "--checkpoint", "{d}/run", "--format", "swav", "--out", "{d}/flat", "--force"],
        "is a folder; give a file name",
    ),
    "shards into an existing file": (["shards", "{d}/labelled", "{d}/a_file"], "is a file"),
    "export of a small-stem ResNet to torchvision": (
        ["export", "--checkpoint", "{d}/run", "--out", "{t}/tv.pth"],
        "torchvision has no resnet_tiny backbone",
    ),
    "an unknown timm model": (
        ["pretrain", "--preset", "demo", "model.arch=timm:no_such_net", "--run-dir", "{t}/r"],
        "timm has no model 'no_such_net'",
    ),
    "a missing --head file": (
        ["predict", "{d}/flat/0.png", "--checkpoint", "{d}/run", "--head", "{d}/no_head.pt"],
        "no linear head at",
    ),
    "a missing --classes file": (
        ["predict", "{d}/flat/0.png", "--checkpoint", "{d}/run", "--head", "{d}/head.pt"]
        + ["--classes", "{d}/no_classes.txt"],
        "no such class list",
    ),
    "a --classes file shorter than the head": (
        ["predict", "{d}/flat/0.png", "--checkpoint", "{d}/run", "--head", "{d}/head.pt"]
        + ["--classes", "{d}/one_class.txt"],
        "names 1 classes, the classifier has 2",
    ),
    "predict --topk 0": (
        ["predict", "{d}/flat/0.png", "--checkpoint", "{d}/run", "--topk", "0"],
        "argument --topk: '0' is not a whole number from 1",
    ),
    "report on a missing run directory": (["report", "{t}/nowhere"], "no such run directory"),
    "eval linear --epochs 0": (
        ["eval", "linear", "--checkpoint", "{d}/run", "--data", "digits", "--epochs", "0"],
        "argument --epochs: '0' is not a whole number from 1",
    ),
    "eval linear --lr nan": (
        ["eval", "linear", "--checkpoint", "{d}/run", "--data", "digits", "--lr", "nan"],
        "argument --lr: 'nan' is not a finite number",
    ),
    "eval linear --val-fraction 1.5": (
        ["eval", "linear", "--checkpoint", "{d}/run", "--data", "digits", "--val-fraction"]
        + ["1.5"],
        "'1.5' is not a finite number >= 0 and < 1",
    ),
    "eval knn --temperature 0": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "digits", "--temperature", "0"],
        "'0' is not a finite number > 0",
    ),
    "eval knn --limit -1": (
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "digits", "--limit", "-1"],
        "'-1' is not a whole number from 0",
    ),
    "embed --split with a typo": (
        ["embed", "{d}/nested", "--split", "trian", "--checkpoint", "{d}/run", "--out"]
        + ["{t}/e.npy"],
        "has no split 'trian' (its sub-folders: train, val)",
    ),
    "--data and data.source disagree": (
        ["pretrain", "--data", "{d}/flat", "data.source=digits", "--run-dir", "{t}/r"],
        "name two different values",
    ),
    "--batch-size 0": (
        ["embed", "{d}/flat", "--checkpoint", "{d}/run", "--out", "{t}/e.npy", "--batch-size"]
        + ["0"],
        "'0' is not a whole number from 1",
    ),
    "--size -10": (
        ["assign", "{d}/flat/0.png", "--checkpoint", "{d}/run", "--size", "-10"],
        "'-10' is not a whole number from 8",
    ),
    "the network changed on resume, named": (
        ["pretrain", "--run-dir", "{t}/copy", "model.arch=resnet18"],
        "another network (model.arch: resnet_tiny -> resnet18)",
    ),
    "another setting changed on resume, named": (
        ["pretrain", "--run-dir", "{t}/copy", "swav.epsilon=0.07"],
        "different configuration (swav.epsilon: 0.05 -> 0.07)",
    ),
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


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--checkpoint", "{d}/run", "--format", "swav", "--out", "{t}/m.pt"],
        ["embed", "{d}/flat", "--checkpoint", "{d}/run", "--out", "{t}/e.npy", "--no-progress"],
        ["eval", "knn", "--checkpoint", "{d}/run", "--data", "digits", "--out", "{t}/k.json"]
        + ["--k", "5", "--no-progress"],
        ["viz", "curves", "{d}/run", "--out", "{t}/c.png"],
    ],
)
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(
    files, tmp_path, capsys, monkeypatch, argv
):
    """Every writer goes through one atomic write: the disk filling up mid-file ends as one
    line naming the file, with nothing half-written left behind."""
    import errno
    import os

    import swav.engine.checkpoint as checkpoint

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    argv = [a.format(d=files, t=tmp_path) for a in argv]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("swav ")]
    assert len(err) == 1 and "No space left on device; free some space" in err[0], err
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("copy", "bare")]


def test_a_second_interrupt_during_a_save_ends_in_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C twice: the second arrives while a checkpoint is being written. The command ends
    with one line (exit 130), and the checkpoint on disk is the previous complete one."""
    from swav.engine.state import RunState

    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "defaults", "--no-progress", *tiny_overrides(run)]
    assert main([*argv[:-1], f"run_dir={run}", "train.epochs=1"]) == 0
    before = (run / "checkpoint.pt").read_bytes()

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunState, "save", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("swav pretrain: interrupted;") and "Traceback" not in "".join(err)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_lost_config_yaml_is_read_from_the_checkpoint(files, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"  # a finished run, config.yaml lost
    shutil.copytree(files / "run", run)
    (run / "config.yaml").unlink()
    assert main(["pretrain", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "has already finished its 1 epochs" in out
    assert main(["pretrain", "--run-dir", str(run), "train.epochs=2", "--no-progress"]) == 0
    assert (run / "config.yaml").exists()


def test_a_symbolic_link_loop_among_the_images_is_skipped(files, tmp_path, caplog):
    import shutil

    folder = tmp_path / "photos" / "a"
    shutil.copytree(files / "flat", folder)
    (folder / "self.jpg").symlink_to("self.jpg")  # a loop with an image's name
    (folder / "up").symlink_to("..")
    argv = ["pretrain", "--data", str(tmp_path / "photos"), "--run-dir", str(tmp_path / "r")]
    with caplog.at_level("WARNING"):
        assert main([*argv, "--no-progress", "train.epochs=1", "train.batch_size=2"]) == 0
    assert "self.jpg: Too many levels of symbolic links" in caplog.text


def test_a_cache_folder_that_is_a_file_is_named(files, tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("SWAV_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["embed", str(files / "flat"), "--checkpoint", str(files / "run")]
    assert main([*argv, "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "SWAV_CACHE_DIR=" in err and "is a file: point it to a folder" in err
