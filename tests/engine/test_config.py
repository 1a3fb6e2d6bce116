import pytest
import yaml

from swav.cli import main
from swav.config import (
    Config,
    ConfigError,
    build_config,
    describe_options,
    presets,
    resolve_run_length,
)
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("name", presets())
def test_every_preset_validates(name):
    cfg = build_config(name)
    assert isinstance(cfg, Config)


IMAGENET = 1_281_167


def test_reference_recipes_match_the_paper():
    # schedules are given as shares of the run; at full length they are the paper's numbers
    main, _ = resolve_run_length(build_config("imagenet_800ep_bs4096"), IMAGENET // 4096)
    assert (main.optim.base_lr, main.optim.final_lr, main.optim.warmup_epochs) == (4.8, 0.0048, 10)
    assert main.multicrop.n_crops == [2, 6] and main.multicrop.sizes == [224, 96]
    assert main.swav.freeze_prototypes_niters == 312 and main.model.n_prototypes == [3000]
    small, _ = resolve_run_length(build_config("imagenet_200ep_bs256_queue"), IMAGENET // 256)
    assert small.swav.queue_length == 3840 and small.swav.epoch_queue_starts == 15
    assert small.swav.freeze_prototypes_niters == 5004
    two = build_config("imagenet_400ep_2x224")
    assert two.multicrop.n_crops == [2] and two.multicrop.min_scale == [0.08]
    w2 = build_config("imagenet_rn50w2_400ep")
    assert w2.model.arch == "resnet50w2" and w2.model.hidden_mlp == 8192


def test_overrides_are_typed():
    cfg = build_config(
        None,
        [
            "train.epochs=3",
            "model.n_prototypes=[10,20]",
            "train.channels_last=false",
            "optim.base_lr=1e-3",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.model.n_prototypes == [10, 20]
    assert cfg.train.channels_last is False and cfg.optim.base_lr == 1e-3
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="train has"):
        build_config(None, ["train.epoch=2"])


def test_help_documents_every_option(capsys):
    assert main(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    for key, default, doc in describe_options():
        assert f"{key} = {default}" in text
        assert doc, f"{key} has no help text"


def test_cli_refuses_bad_config_with_exit_code(tmp_path, capsys):
    assert main(["pretrain", f"run_dir={tmp_path / 'x'}", "swav.epsilon=-1"]) == 2
    assert "swav.epsilon" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resolved_config_written(tmp_path):
    from swav.engine.train import pretrain
    from tests.conftest import tiny_overrides

    cfg = build_config(None, tiny_overrides(tmp_path / "r", **{"train.epochs": 1}))
    pretrain(cfg, progress=False)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 16 and saved["model"]["arch"] == "resnet_tiny"


def test_learning_rate_follows_the_global_batch_the_preset_states():
    from swav.engine.trainer import lr_batch_scale

    cfg = build_config("imagenet_800ep_bs4096", [])
    assert cfg.train.global_batch == cfg.train.batch_size * 64 == 4096
    assert lr_batch_scale(cfg, 64) == (1.0, None)
    factor, note = lr_batch_scale(cfg, 8)  # 8 x 64 = 512
    assert factor == 512 / 4096
    assert "global batch 512 (8 x 64) instead of the 4096" in note and "4.8 -> 0.6" in note
    small = build_config("imagenet_200ep_bs256_queue", [])
    assert lr_batch_scale(small, 4) == (1.0, None)
    assert lr_batch_scale(small, 1)[0] == 0.25
    kept = build_config("imagenet_800ep_bs4096", ["train.global_batch=0"])
    assert lr_batch_scale(kept, 8) == (1.0, None)  # as given
    for name in presets():
        c = build_config(name, [])
        assert c.train.global_batch % c.train.batch_size == 0, name  # a whole number of processes


def test_a_configuration_is_checked_once_and_never_changed_by_the_run(tmp_path, monkeypatch):
    import swav.config.checks as checks
    from swav.engine.train import pretrain

    calls = []
    real = checks.check_settings
    monkeypatch.setattr(checks, "check_settings", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = build_config(None, tiny_overrides(tmp_path / "once", **{"train.epochs": 1}))
    given = cfg.to_dict()
    pretrain(cfg, progress=False)
    assert len(calls) == 1  # by build_config; pretrain (one process) finds it checked
    assert cfg.to_dict() == given
    cfg.train.epochs = 0  # changed after the check: checked again, and refused
    with pytest.raises(ConfigError, match="train.epochs"):
        pretrain(cfg, progress=False)
