"""Run directories and checkpoints written by earlier versions keep working.

``tests/fixtures/legacy_run`` was written by the version before the package's redesign: the
tiny configuration below, with a queue, stopped after its first of two epochs.
``legacy_final.json`` holds per-tensor sums of the weights that version reached when it trained
both epochs without stopping."""

import json
import math
import shutil
from pathlib import Path

import yaml

from swav.config import build_config, config_from_dict
from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import RunDir
from swav.engine.train import pretrain
from swav.interop.checkpoints import load_checkpoint
from tests.conftest import tiny_overrides

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY = {
    "train.deterministic": True,
    "swav.queue_length": 32,
    "swav.epoch_queue_starts": 0,
    "train.iters_per_epoch": 2,
}


def _legacy_copy(tmp_path):
    run = tmp_path / "legacy_run"
    shutil.copytree(FIXTURES / "legacy_run", run)
    return run


def test_legacy_run_directory_loads(tmp_path):
    run = _legacy_copy(tmp_path)
    loaded = load_checkpoint(run)
    assert loaded.layout == "swav-run" and loaded.arch == "resnet_tiny"
    assert loaded.meta["epoch"] == 1 and loaded.model.n_prototypes == [20]
    cfg = build_config(None, tiny_overrides(run, **LEGACY))
    written = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert written.fingerprint() == cfg.fingerprint()
    metrics = RunDir.of(run).read_metrics()
    assert [m["iteration"] for m in metrics if "kind" not in m] == [0, 1]


def test_legacy_run_directory_resumes_to_the_same_weights(tmp_path):
    run = _legacy_copy(tmp_path)
    cfg = build_config(None, tiny_overrides(run, **LEGACY))
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == 2 and not r.interrupted
    expected = json.loads((FIXTURES / "legacy_final.json").read_text())
    assert math.isclose(r.last_loss, expected["last_loss"], rel_tol=1e-3)
    weights = safe_load(run / "checkpoint.pt")["model"]
    compared = 0
    for name, total in expected["sums"].items():
        scale = expected["abs_sums"][name]
        got = float(weights[name].double().sum())
        assert abs(got - total) <= 1e-3 * scale + 1e-6, name
        compared += 1
    assert compared == len([v for v in weights.values() if v.is_floating_point()])
    iterations = [m["iteration"] for m in RunDir.of(run).read_metrics() if "kind" not in m]
    assert iterations == [0, 1, 2, 3]
