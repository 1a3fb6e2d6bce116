"""The recipe ``swav pretrain --data`` chooses from the data and the machine."""

import pytest

from swav.cli import main
from swav.config import build_config
from swav.engine.recipe import (
    CPU_BACKBONES,
    STEPS_WANTED,
    choose_cpu_backbone,
    suggest_recipe,
    time_step,
)
from swav.engine.run_dir import read_metrics
from tests.conftest import SHARED

# seconds per step of each CPU backbone on a made-up machine
PACE = {"resnet18": 3.0, "resnet18_half": 1.0, "resnet_tiny": 0.5}


def paced(timed: list[str] | None = None, pace: dict[str, float] = PACE):
    """A step timer at ``pace`` that notes the backbones it was asked to time."""

    def timer(arch, recipe):
        assert recipe.settings["train.batch_size"] > 0 and "model.small_stem" in recipe.settings
        if timed is not None:
            timed.append(arch)
        return pace[arch]

    return timer


@pytest.mark.skipif(not (SHARED / "imagenette-96.tar.gz").exists(), reason="shared data")
def test_recipe_for_imagenette_on_a_cpu():
    data = str(SHARED / "imagenette-96.tar.gz")
    r = suggest_recipe(data, gpus=0, budget="4h", step_timer=paced())
    s = r.settings
    assert s["data.split"] == "train" and s["data.eval_split"] == "val"
    assert s["multicrop.sizes"] == [96, 48] and s["multicrop.n_crops"] == [2, 4]
    assert s["model.arch"] == "resnet18" and not s["model.small_stem"]  # 4800 steps of 3 s
    # a small batch: few prototypes, no queue, a small embedding, a soft temperature
    assert s["train.batch_size"] == 64 and s["model.n_prototypes"] == [100]
    assert s["swav.queue_length"] == 0 and s["model.output_dim"] == 32
    assert s["optim.base_lr"] == 1.2 and s["optim.lars_exclude_bias_norm"] is False
    assert all(k in r.reasons and r.reasons[k] for k in s)  # every choice has its reason
    cfg = build_config(None, r.overrides())  # and it is a valid configuration
    assert cfg.model.n_prototypes == [100]
    # on 4 GPUs: the paper's embedding, K from the data size, a queue to reach 1.5 K rows
    g = suggest_recipe(str(SHARED / "imagenette-96.tar.gz"), gpus=4).settings
    k, batch, queue = g["model.n_prototypes"][0], g["train.batch_size"], g["swav.queue_length"]
    assert k == 470 and g["model.output_dim"] == 128 and batch == 256 and queue == 0
    assert 4 * batch >= 1.5 * k
    one = suggest_recipe(str(SHARED / "imagenette-96.tar.gz"), gpus=1).settings
    assert one["swav.queue_length"] == 512 and 256 + 512 >= 1.5 * 470  # the queue fills the gap
    assert one["swav.epoch_queue_starts"] == "10%"
    assert one["optim.base_lr"] == 0.6 and g["optim.base_lr"] == 2.4  # 0.6 x batch / 256


def test_recipe_scales_with_the_data_and_the_hardware(image_folder):
    small = suggest_recipe(str(image_folder), gpus=0, step_timer=paced()).settings
    assert small["data.split"] == ""  # no train/ sub-folder: every image
    # 32 px on a CPU: 24 px crops (1.8x the steps), the whole images evaluated at 32
    assert small["multicrop.sizes"] == [24, 12] and small["model.small_stem"]
    assert small["multicrop.eval_size"] == 32 and small["multicrop.jitter"][0] == 0.4
    mine = suggest_recipe(str(image_folder), gpus=0, arch="resnet18")
    assert build_config(None, mine.overrides())
    on_gpu = suggest_recipe(str(image_folder), gpus=1).settings
    assert on_gpu["multicrop.sizes"] == [32, 16] and "multicrop.eval_size" not in on_gpu
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


def test_the_recipe_on_a_cpu_gives_a_time_budget_and_prints_the_values_used(
    image_folder, tmp_path, capsys
):
    recipe = suggest_recipe(str(image_folder), gpus=0, step_timer=paced())
    assert recipe.settings["train.time_budget"] == "30m" and "train.epochs" not in recipe.settings
    assert suggest_recipe(str(image_folder), gpus=2).settings["train.epochs"] == 200
    lines = recipe.describe({"train.time_budget": "2h", "model.arch": "resnet18"})
    assert "train.time_budget = 2h  (your setting; the recipe's: 30m)" in lines
    assert "model.arch = resnet18  (your setting; the recipe's: resnet_tiny)" in lines
    fixed = recipe.describe({"train.epochs": "12"})
    assert "train.time_budget = 0  (your setting; the recipe's: 30m)" in fixed
    assert "train.epochs = 12  (your setting)" in fixed
    # a fixed number of epochs asked for on the command line: no budget, the epochs kept
    run = tmp_path / "fixed"
    argv = ["pretrain", "--data", str(image_folder), "--run-dir", str(run), "--no-progress"]
    tiny = ["model.arch=resnet_tiny", "train.epochs=2", "data.workers=0", "train.precision=fp32"]
    assert main([*argv, *tiny]) == 0
    out = capsys.readouterr().out
    assert "train.epochs = 2  (your setting)" in out and "finished: 2 epochs" in out
    assert "time_budget: 0" in (run / "config.yaml").read_text()


def test_on_a_cpu_the_backbone_is_the_largest_that_makes_enough_steps_in_the_budget(image_folder):
    """Timed from the smallest up, until one falls short of ``STEPS_WANTED`` steps."""
    hours = {n: f"{n * STEPS_WANTED / 3600}h" for n in (0.25, 1, 3)}
    timed: list[str] = []
    arch = suggest_recipe(str(image_folder), gpus=0, budget=hours[3], step_timer=paced(timed))
    assert arch.settings["model.arch"] == "resnet18" and timed == list(reversed(CPU_BACKBONES))
    assert "the largest backbone that makes" in arch.reasons["model.arch"]
    timed.clear()
    arch = suggest_recipe(str(image_folder), gpus=0, budget=hours[1], step_timer=paced(timed))
    assert arch.settings["model.arch"] == "resnet18_half" and len(timed) == 3
    timed.clear()
    arch = suggest_recipe(str(image_folder), gpus=0, budget=hours[0.25], step_timer=paced(timed))
    assert arch.settings["model.arch"] == "resnet_tiny" and timed == ["resnet_tiny"]
    why = arch.reasons["model.arch"]
    assert "none makes" in why and "a longer train.time_budget" in why
    # the user's backbone, or a fixed number of epochs: nothing timed
    timed.clear()
    mine = suggest_recipe(str(image_folder), gpus=0, arch="resnet34", step_timer=paced(timed))
    fixed = suggest_recipe(str(image_folder), gpus=0, budget="0", step_timer=paced(timed))
    assert mine.settings["model.arch"] == "resnet34" and fixed.settings["model.arch"] == "resnet18"
    assert timed == []
    # the rule alone, and a real timing (positive, and larger for the larger backbone)
    assert choose_cpu_backbone(lambda a: 1.0, STEPS_WANTED)[0] == "resnet18"
    assert choose_cpu_backbone(lambda a: 1.0, STEPS_WANTED - 1)[0] == "resnet_tiny"
    r = suggest_recipe(str(image_folder), gpus=0, arch="resnet18")
    assert 0 < time_step("resnet_tiny", r, repeats=1) < time_step("resnet18", r, repeats=1)
