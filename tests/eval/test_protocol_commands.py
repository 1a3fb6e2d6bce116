"""Each `swav eval` command end to end on a tiny labelled dataset."""

import json

import pytest

from swav.cli import main
from swav.config import build_config
from swav.engine.train import pretrain
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun") / "run"
    pretrain(build_config(None, tiny_overrides(d, **{"train.epochs": 1})), progress=False)
    return d


@pytest.mark.parametrize(
    "argv,key",
    [
        (["knn", "--k", "5", "20"], "k=5"),
        (["linear", "--fast", "--epochs", "3"], "top1"),
        (["linear", "--epochs", "1", "--batch-size", "64"], "top1"),
        (["linear", "--stages", "--epochs", "2"], "stage4"),
        (["semisup", "--fraction", "0.1", "--epochs", "1", "--batch-size", "32"], "top1"),
        (["lowshot", "--shots", "1", "2", "--draws", "2"], "k=2"),
        (["cluster"], "nmi"),
    ],
)
def test_eval_command_end_to_end(run_dir, tmp_path, argv, key, capsys):
    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            *argv,
            "--checkpoint",
            str(run_dir),
            "--limit",
            "120",
            "--out",
            str(out),
            "--no-progress",
        ]
        if argv[0] != "semisup"
        else ["eval", *argv, "--checkpoint", str(run_dir), "--limit", "120", "--out", str(out)]
    )
    assert code == 0
    rec = json.loads(out.read_text())
    assert key in rec["results"]
    assert rec["checkpoint"].endswith("checkpoint.pt") and rec["seed"] == 0
    assert rec["data"] == "digits" and rec["protocol"] == argv[0]
    assert argv[0] in capsys.readouterr().out


def test_report_gathers_results(run_dir, capsys):
    assert (
        main(["eval", "cluster", "--checkpoint", str(run_dir), "--limit", "60", "--no-progress"])
        == 0
    )
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "REPORT.md").read_text()
    assert "## Evaluation" in text and "cluster" in text and "loss.png" in text


def _strict_json(text):
    def reject(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_results_are_strict_json(run_dir, tmp_path):
    out = tmp_path / "s.json"
    argv = ["eval", "semisup", "--checkpoint", str(run_dir), "--limit", "120", "--epochs", "1"]
    assert main([*argv, "--batch-size", "32", "--out", str(out), "--no-progress"]) == 0
    rec = _strict_json(out.read_text())  # the fine-tuning's train_top1 is not computed: null
    assert rec["results"]["train_top1"] is None


@pytest.mark.parametrize(
    "argv,words",
    [
        (["eval", "knn", "--k", "0"], "is not a whole number from 1"),
        (["eval", "knn", "--k", "5000"], "more than the 120 training images"),
        (["eval", "knn", "--data", "{folder}"], "no 'train' sub-folder"),
        (["embed", "{folder}", "--out", "{tmp}/x.csv"], "one of .npy, .parquet"),
    ],
)
def test_eval_refuses_what_would_give_a_wrong_answer(
    run_dir, tmp_path, image_folder, capsys, argv, words
):
    argv = [a.replace("{folder}", str(image_folder)).replace("{tmp}", str(tmp_path)) for a in argv]
    extra = ["--limit", "120"] if argv[0] == "eval" else []
    code = main([*argv, "--checkpoint", str(run_dir), *extra, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.csv.npy").exists()


def test_unreadable_evaluation_images_are_counted_in_the_result(run_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(4):
                img = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
                img.save(tmp_path / "d" / split / c / f"{i}.png")
    (tmp_path / "d" / "val" / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "k.json"
    argv = ["eval", "knn", "--checkpoint", str(run_dir), "--data", str(tmp_path / "d")]
    assert main([*argv, "--k", "3", "--out", str(out), "--no-progress"]) == 0
    rec = json.loads(out.read_text())
    assert rec["unreadable_images"] == {"val": 1} and rec["n_test"] == 9
