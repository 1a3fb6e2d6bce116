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
