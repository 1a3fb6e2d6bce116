"""The recipe ``swav pretrain --data`` chooses from the data and the machine."""

import pytest

from swav.cli import main
from swav.config import build_config
from swav.engine.recipe import suggest_recipe
from swav.engine.run_dir import read_metrics
from tests.conftest import SHARED


@pytest.mark.skipif(not (SHARED / "imagenette-96.tar.gz").exists(), reason="shared data")
def test_recipe_for_imagenette_on_a_cpu():
    r = suggest_recipe(str(SHARED / "imagenette-96.tar.gz"), gpus=0)
    s = r.settings
    assert s["data.split"] == "train" and s["data.eval_split"] == "val"
    assert s["multicrop.sizes"] == [96, 48] and s["multicrop.n_crops"] == [2, 4]
    assert s["model.arch"] == "resnet18" and not s["model.small_stem"]
    k, batch, queue = s["model.n_prototypes"][0], s["train.batch_size"], s["swav.queue_length"]
    assert k == 470 and batch == 64
    assert batch + queue >= 1.5 * k and queue % batch == 0 and queue <= 9469 // 4
    assert s["swav.epoch_queue_starts"].endswith("%")
    assert all(k in r.reasons and r.reasons[k] for k in s)  # every choice has its reason
    cfg = build_config(None, r.overrides())  # and it is a valid configuration
    assert cfg.model.n_prototypes == [470]


def test_recipe_scales_with_the_data_and_the_hardware(image_folder):
    small = suggest_recipe(str(image_folder), gpus=0).settings
    assert small["data.split"] == ""  # no train/ sub-folder: every image
    assert small["multicrop.sizes"] == [32, 16] and small["model.small_stem"]
    assert small["train.batch_size"] <= 24 // 4
    big = suggest_recipe(str(image_folder), gpus=8, size=500).settings
    assert big["multicrop.sizes"] == [224, 96] and big["multicrop.n_crops"] == [2, 6]


def test_pretrain_with_only_data_uses_the_recipe_and_ends_healthy(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["pretrain", "--data", str(image_folder), "--run-dir", str(run), "--no-progress"]
    tiny = ["model.arch=resnet_tiny", "train.epochs=2", "data.workers=0", "train.precision=fp32"]
    assert main([*argv, *tiny]) == 0
    out = capsys.readouterr().out
    assert "recipe for" in out and "model.n_prototypes" in out and "model healthy" in out
    assert read_metrics(run)[-1]["kind"] == "end"
