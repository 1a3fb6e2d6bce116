"""Collapse: the monitor's signals, schedules that follow the run's length, and what a run does
when it collapses (warn, stop, recover)."""

import math

import pytest
import torch
import yaml

from swav.config import build_config, presets, resolve_run_length
from swav.engine.checkpoint import safe_load
from swav.engine.health import CollapseError, CollapseMonitor
from swav.engine.run_dir import read_metrics
from swav.engine.train import pretrain
from swav.errors import ConfigError
from tests.conftest import tiny_overrides

LN50 = math.log(50)


def _flush(m, first, n, loss, entropy, spread=0.9 / 4, queue=False):
    return m.observe([(i, loss) for i in range(first, first + n)], entropy, spread, queue)


def test_monitor_declares_each_signal_after_patience():
    # uniform codes (entropy at ln K) with a healthy spread and a falling loss
    m = CollapseMonitor([50], patience=20, start_iteration=10, embedding_dim=16)
    assert _flush(m, 0, 10, 3.0, LN50) is None  # before the start: not counted
    assert _flush(m, 10, 10, 3.0, LN50) is None  # 10 of 20
    c = _flush(m, 20, 10, 3.0, LN50)
    assert c is not None and c.uniform_codes and not c.flat_embeddings and c.since == 10
    assert not m.healthy and _flush(m, 30, 10, 3.0, LN50) is None  # declared once
    assert _flush(m, 40, 10, 3.0, 0.5 * LN50) is None and m.healthy  # recovered by itself
    # embeddings collapsed to one point
    m = CollapseMonitor([50], patience=10, start_iteration=0, embedding_dim=16)
    c = _flush(m, 0, 10, 3.0, 0.5 * LN50, spread=0.001)
    assert c is not None and c.flat_embeddings and not c.uniform_codes
    # the loss at ln K alone is not collapse (a soft temperature starts there); with uniform
    # codes it is part of the evidence
    m = CollapseMonitor([50], patience=10, start_iteration=0, embedding_dim=16)
    assert _flush(m, 0, 20, LN50 * 1.001, 0.5 * LN50) is None and m.healthy
    c = _flush(m, 20, 10, LN50 * 1.001, LN50)
    assert c is not None and c.uniform_codes and c.loss_at_ln_k and "ln K" in c.describe()


def test_monitor_stays_quiet_on_healthy_signals():
    m = CollapseMonitor([50], patience=5, start_iteration=0, embedding_dim=16)
    for first in range(0, 200, 10):
        assert _flush(m, first, 10, 0.8 * LN50, 0.6 * LN50) is None
    assert m.healthy


@pytest.mark.parametrize("name", presets())
def test_every_preset_shortened_to_a_tenth_keeps_its_schedule_inside_the_run(name):
    cfg = build_config(name)
    epochs = max(1, cfg.train.epochs // 10)
    short = build_config(name, [f"train.epochs={epochs}"])
    iters = 1_281_167 // 4096 if name.startswith("imagenet") else 50
    resolved, notes = resolve_run_length(short, iters)
    total = epochs * iters
    assert resolved.optim.warmup_epochs < epochs, notes
    assert resolved.swav.freeze_prototypes_niters < 0.5 * total, notes
    assert resolved.train.collapse_patience < total, notes
    if resolved.swav.queue_length:
        assert resolved.swav.epoch_queue_starts < epochs, notes
    assert not any("past the end" in n for n in notes), notes


@pytest.mark.parametrize("name", presets())
def test_presets_with_a_small_batch_take_the_small_batch_settings(name):
    """Below a global batch of 256 the codes of a batch with hundreds of prototypes start nearly
    uniform, and a short run stays at ln K (the `imagenette96` preset with 1000 prototypes, a
    queue and 128-d codes sat at ln 1000 and below a random network at 12 epochs): such presets
    take the settings `swav pretrain --data` uses for a small batch."""
    cfg = build_config(name)
    batch = cfg.train.global_batch or cfg.train.batch_size
    if batch >= 256:
        pytest.skip(f"global batch {batch}")
    assert max(cfg.model.n_prototypes) <= 100 and cfg.model.output_dim <= 32
    assert cfg.swav.queue_length == 0 and cfg.swav.temperature >= 0.2


def test_percentages_resolve_against_the_run():
    cfg = build_config(
        None,
        tiny_overrides(
            "/tmp/unused",
            **{
                "train.epochs": 20,
                "optim.warmup_epochs": "10%",
                "swav.epoch_queue_starts": "25%",
                "swav.queue_length": 32,
                "swav.freeze_prototypes_niters": "5%",
                "train.collapse_patience": "50%",
            },
        ),
    )
    resolved, notes = resolve_run_length(cfg, 10)
    assert resolved.optim.warmup_epochs == 2.0
    assert resolved.swav.epoch_queue_starts == 5
    assert resolved.swav.freeze_prototypes_niters == 10
    assert resolved.train.collapse_patience == 100
    assert any("25% of 20 epochs: 5" in n for n in notes)
    assert cfg.swav.epoch_queue_starts == "25%"  # the given configuration is left as it was
    late = build_config(
        None,
        tiny_overrides("/tmp/unused", **{"swav.queue_length": 32, "swav.epoch_queue_starts": 15}),
    )
    assert any("past the end" in n for n in resolve_run_length(late, 3)[1])
    for bad in ("train.collapse_patience=abc", "swav.epoch_queue_starts=150%"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            build_config(None, tiny_overrides("/tmp/unused") + [bad])


# A run forced to collapse: epsilon this large makes every code uniform from the first step.
FORCED = {
    "swav.epsilon": 2.0,
    "train.epochs": 3,
    "train.iters_per_epoch": 8,
    "train.log_every": 2,
    "train.collapse_patience": 6,
    "swav.freeze_prototypes_niters": 2,
}


def _health(run):
    return [m for m in read_metrics(run) if m.get("kind") == "health"]


def test_forced_collapse_is_detected_within_a_bounded_number_of_iterations(tmp_path):
    run = tmp_path / "warn"
    cfg = build_config(None, tiny_overrides(run, **FORCED, **{"train.on_collapse": "warn"}))
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == 3 and not r.healthy  # warned and went on
    collapses = [m for m in read_metrics(run) if m.get("kind") == "collapse"]
    assert len(collapses) == 1 and collapses[0]["uniform_codes"]
    # freezing (2) + patience (6) + one flush interval (2)
    assert collapses[0]["iteration"] <= 2 + 6 + 2
    assert read_metrics(run)[-1] == {"kind": "end", "epoch": 3, "healthy": False, "recoveries": 0}


def test_forced_collapse_stops_when_asked(tmp_path):
    run = tmp_path / "stop"
    cfg = build_config(None, tiny_overrides(run, **FORCED, **{"train.on_collapse": "stop"}))
    with pytest.raises(CollapseError, match="uniform codes"):
        pretrain(cfg, progress=False)


def test_recover_returns_a_collapsed_run_to_non_uniform_codes(tmp_path):
    run = tmp_path / "recover"
    overrides = {**FORCED, "train.epochs": 6, "train.on_collapse": "recover"}
    cfg = build_config(None, tiny_overrides(run, **overrides, **{"train.max_recoveries": 6}))
    given = cfg.to_dict()
    r = pretrain(cfg, progress=False)
    assert r.epochs_done == 6 and r.healthy and r.recoveries
    assert all("epsilon" in rec for rec in r.recoveries)  # uniform codes, spread embeddings
    # the changes live in the run state (checkpoint, log); the configuration stays as given
    assert cfg.to_dict() == given and cfg.swav.epsilon == 2.0
    saved = safe_load(run / "checkpoint.pt")
    assert saved["config"]["swav"]["epsilon"] == 2.0 and saved["recovery"]["epsilon"] < 2.0
    assert yaml.safe_load((run / "config.yaml").read_text())["swav"]["epsilon"] == 2.0
    records = [m for m in read_metrics(run) if m.get("kind") == "recovery"]
    assert len(records) == len(r.recoveries)
    last = _health(run)[-3:]
    assert all(h["code_entropy"] < 0.98 * math.log(20) for h in last)
    assert read_metrics(run)[-1]["healthy"] is True


def _collapse(**kw):
    from swav.engine.health import Collapse

    base = dict(
        iteration=100,
        since=80,
        uniform_codes=False,
        flat_embeddings=False,
        loss_at_ln_k=False,
        entropy_ratio=0.5,
        spread=0.5,
        queue_active=False,
    )
    return Collapse(**{**base, **kw})


def test_recovery_changes_what_the_evidence_points_to():
    from swav.engine.recovery import Adjustments, plan_recovery

    def plan(c, **kw):
        args = dict(
            epsilon=0.05,
            freeze_iters=10,
            restart_iteration=60,
            epoch=3,
            epochs=20,
            iters_per_epoch=20,
        )
        return plan_recovery(c, Adjustments(), **{**args, **kw})

    adj, changes = plan(_collapse(flat_embeddings=True, uniform_codes=True, spread=0.01))
    assert adj.lr_scale == 0.5 and "learning rate" in changes and adj.epsilon is None
    adj, changes = plan(_collapse(uniform_codes=True, queue_active=True))
    assert adj.queue_start == 3 + 2 and "queue" in changes and adj.lr_scale == 1.0
    adj, changes = plan(_collapse(uniform_codes=True), queue_waiting=True)
    assert adj.queue_start == 60 // 20 and "queue" in changes
    adj, changes = plan(_collapse(uniform_codes=True))
    assert adj.epsilon == 0.025 and "epsilon" in changes
    assert plan(_collapse(uniform_codes=True), epsilon=0.012)[0].epsilon == 0.01  # floor
    # prototypes frozen again for at least an epoch after the rewind; the record kept
    assert adj.freeze_until == 60 + 20 and len(adj.recoveries) == 1
    assert "uniform codes" in adj.recoveries[0]["evidence"]
    # a second recovery builds on the first
    again, _ = plan_recovery(
        _collapse(flat_embeddings=True, spread=0.01), adj, 0.025, 10, 60, 3, 20, 20
    )
    assert again.lr_scale == 0.5 and again.epsilon == 0.025 and len(again.recoveries) == 2
    assert Adjustments.from_state(again.state_dict()) == again


def test_run_eta_reads_as_a_duration():
    from swav.engine.logger import run_eta

    assert run_eta(100, 0.5) == "00:00:50"
    assert run_eta(7200, 1.0) == "02:00:00"
    assert run_eta(100000, 1.0) == "1d 03:46:40"
    assert run_eta(-5, 1.0) == "00:00:00"


def _logging_rank(rank, world, init_file, run_dir):
    from pathlib import Path

    import torch.distributed as dist

    from swav.engine.logger import TrainLogger
    from swav.engine.run_dir import RunDir

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    run = RunDir(Path(run_dir))
    monitor = CollapseMonitor([4], patience=100, start_iteration=0, embedding_dim=8)
    logger = TrainLogger(
        run, rank == 0, [4], 1, 2, 2, monitor, False, torch.device("cpu"), distributed=True
    )
    codes = torch.eye(4)[[rank * 2, rank * 2]]  # rank 0 uses prototype 0, rank 1 prototype 2
    for it in range(2):
        loss = torch.tensor(1.0 + rank + it)  # rank 0: 1, 2; rank 1: 2, 3
        logger.step(it, loss, 0.1, codes, 4, torch.tensor(0.2 * (rank + 1)))
    logger.flush(False, "ck")
    logger.end_epoch(False, 0)
    logger.close()
    dist.destroy_process_group()


def test_logged_metrics_are_reduced_over_all_processes(tmp_path):
    import torch.multiprocessing as mp

    from swav.engine.run_dir import RunDir

    (tmp_path / "run").mkdir()
    mp.spawn(_logging_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "run")), nprocs=2)
    records = RunDir(tmp_path / "run").read_metrics()
    losses = [r["loss"] for r in records if "kind" not in r]
    assert losses == [1.5, 2.5]  # the mean over both processes, per iteration
    health = next(r for r in records if r.get("kind") == "health")
    assert health["prototypes_in_batch"] == 2  # prototype 0 on one process, 2 on the other
    assert abs(health["embedding_spread"] - 0.3) < 1e-6
    epoch = next(r for r in records if r.get("kind") == "epoch")
    assert epoch["prototypes_used"] == 2
