"""Run directories and checkpoints written by earlier versions keep working.

The version before the package's redesign (commit ``LEGACY``) is taken from the repository's
history and run as it was: it writes a run directory of the tiny configuration below, with a
queue, stopped after its first of two epochs, and trains the same configuration both epochs
without stopping. The current version must load the first, resume it, and reach the weights of
the second."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from swav.config import build_config, config_from_dict
from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import RunDir
from swav.engine.train import pretrain
from swav.interop.checkpoints import load_checkpoint
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "e6f6bcb2e79e58beaf1f936e6f399d4c15a45f5b"
SETTINGS = {
    "train.deterministic": True,
    "swav.queue_length": 32,
    "swav.epoch_queue_starts": 0,
    "train.iters_per_epoch": 2,
}

WRITE = """
import json, torch
from swav.config import build_config
from swav.engine.train import pretrain
from tests.conftest import tiny_overrides
torch.set_num_threads(1)
settings = json.loads({settings!r})
pretrain(build_config(None, tiny_overrides("legacy_run", **settings)), progress=False,
         stop_after_epoch=1)
done = pretrain(build_config(None, tiny_overrides("straight", **settings)), progress=False)
model = torch.load("straight/checkpoint.pt", weights_only=True)["model"]
json.dump({{"last_loss": done.last_loss,
           "sums": {{k: float(v.double().sum()) for k, v in model.items()
                     if v.is_floating_point()}},
           "abs_sums": {{k: float(v.double().abs().sum()) for k, v in model.items()
                         if v.is_floating_point()}}}}, open("legacy_final.json", "w"))
"""


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """(run directory written by the previous version, its uninterrupted result)."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", LEGACY], capture_output=True)
    if known.returncode != 0:  # a shallow clone without the history
        pytest.skip(f"commit {LEGACY[:7]} is not in this clone's history")
    old = tmp_path_factory.mktemp("legacy")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LEGACY, "src", "tests/conftest.py"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = dict(os.environ, PYTHONPATH=f"{old / 'src'}{os.pathsep}{old}", OMP_NUM_THREADS="1")
    script = WRITE.format(settings=json.dumps(SETTINGS))
    subprocess.run([sys.executable, "-c", script], cwd=old, env=env, check=True, timeout=300)
    return old / "legacy_run", json.loads((old / "legacy_final.json").read_text())


def _copy(legacy, tmp_path):
    run = tmp_path / "legacy_run"
    shutil.copytree(legacy[0], run)
    return run


def test_legacy_run_directory_loads(legacy, tmp_path):
    run = _copy(legacy, tmp_path)
    loaded = load_checkpoint(run)
    assert loaded.layout == "swav-run" and loaded.arch == "resnet_tiny"
    assert loaded.meta["epoch"] == 1 and loaded.model.n_prototypes == [20]
    cfg = build_config(None, tiny_overrides(run, **SETTINGS))
    written = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert written.fingerprint() == cfg.fingerprint()
    metrics = RunDir.of(run).read_metrics()
    assert [m["iteration"] for m in metrics if "kind" not in m] == [0, 1]


def test_legacy_run_directory_resumes_to_the_same_weights(legacy, tmp_path):
    run = _copy(legacy, tmp_path)
    expected = legacy[1]
    r = pretrain(build_config(None, tiny_overrides(run, **SETTINGS)), progress=False)
    assert r.epochs_done == 2 and not r.interrupted
    records = RunDir.of(run).read_metrics()
    last_epoch = [m for m in records if m.get("kind") == "epoch"][-1]
    assert math.isclose(last_epoch["last_loss"], expected["last_loss"], rel_tol=1e-3)
    steps = {m["iteration"]: m["loss"] for m in records if "kind" not in m}
    assert math.isclose(r.last_loss, (steps[2] + steps[3]) / 2, rel_tol=1e-6)  # the epoch's mean
    weights = safe_load(run / "checkpoint.pt")["model"]
    for name, total in expected["sums"].items():
        scale = expected["abs_sums"][name]
        assert abs(float(weights[name].double().sum()) - total) <= 1e-3 * scale + 1e-6, name
    assert len(expected["sums"]) == len([v for v in weights.values() if v.is_floating_point()])
    iterations = [m["iteration"] for m in RunDir.of(run).read_metrics() if "kind" not in m]
    assert iterations == [0, 1, 2, 3]
