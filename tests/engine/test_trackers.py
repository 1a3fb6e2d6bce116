"""train.loggers: TensorBoard, W&B (offline) and MLflow (file store) receive the configuration,
every metric of metrics.jsonl and the evaluation results, for real, and a resumed run goes on
in the same tracker runs. Each tracker's own files are read back and compared with
metrics.jsonl."""

import json
import struct
from pathlib import Path

import pytest

from swav.cli import main
from swav.config import ConfigError, build_config
from swav.engine.run_dir import RunDir
from swav.engine.trackers import Trackers
from tests.conftest import tiny_overrides

ALL = "train.loggers=[tensorboard,wandb,mlflow]"


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then
    LevelDB-style 32 KiB blocks of chunks (crc 4, length 2, type 1: full, first, middle,
    last) holding protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left  # block trailer
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(pending)
            records.append(r)
            pending = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    d = tmp_path_factory.mktemp("tracked")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(d / "wandb"))
    (d / "wandb").mkdir()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = d / "run"
    first = tiny_overrides(run, **{"train.epochs": 2}) + [ALL]
    assert main(["pretrain", "--preset", "demo", *first, "--no-progress"]) == 0
    assert main(["eval", "knn", "--checkpoint", str(run), "--no-progress", "--limit", "64"]) == 0
    more = tiny_overrides(run, **{"train.epochs": 3}) + [ALL]  # resumed for a 3rd epoch
    assert main(["pretrain", "--preset", "demo", *more, "--no-progress"]) == 0
    yield run, d
    mp.undo()


def losses(run: Path) -> dict[int, float]:
    rows = RunDir.of(run).read_metrics()
    return {r["iteration"]: r["loss"] for r in rows if "kind" not in r}


def test_mlflow_file_store_holds_config_metrics_and_evaluation(tracked):
    import mlflow

    run, _ = tracked
    state = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == (run / "mlruns").resolve().as_uri()
    client = mlflow.MlflowClient(state["tracking_uri"])
    found = client.search_runs([client.get_experiment_by_name("swav").experiment_id])
    assert [r.info.run_id for r in found] == [state["run_id"]]  # the resume went on in it
    r = client.get_run(state["run_id"])
    assert r.data.params["train.batch_size"] == "16"
    assert r.data.params["model.arch"] == '"resnet_tiny"'
    history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "train/loss")}
    want = losses(run)
    assert sorted(history) == sorted(want) and max(want) == 8  # 3 epochs x 3 iterations
    for step, value in want.items():
        assert history[step] == pytest.approx(value, rel=1e-6)
    knn = json.loads((run / "eval" / "knn.json").read_text())["results"]["k=20"]["top1"]
    assert r.data.metrics["eval/knn/k_20/top1"] == pytest.approx(knn)


def test_wandb_offline_run_holds_config_metrics_and_evaluation(tracked):
    run, d = tracked
    state = json.loads((run / "trackers.json").read_text())["wandb"]
    logs = sorted((d / "wandb").rglob(f"run-{state['id']}.wandb"))
    assert len(logs) == 3  # training, the evaluation, the resumed training: one run id
    history, summary, config, ids = {}, {}, {}, set()
    for log in logs:
        for r in wandb_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                ids.add(r.run.run_id)
                config.update({_key(i): i.value_json for i in r.run.config.update})
            elif kind == "history":
                item = {_key(i): json.loads(i.value_json) for i in r.history.item}
                if "train/loss" in item:
                    history[int(item["_step"])] = item["train/loss"]
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
            elif kind == "config":
                config.update({_key(i): i.value_json for i in r.config.update})
    assert ids == {state["id"]}
    assert "train" in config and "batch_size" in config["train"]
    want = losses(run)
    assert sorted(history) == sorted(want)
    for step, value in want.items():
        assert history[step] == pytest.approx(value, rel=1e-6)
    knn = json.loads((run / "eval" / "knn.json").read_text())["results"]["k=20"]["top1"]
    assert summary["eval/knn/k=20/top1"] == pytest.approx(knn)


def test_tensorboard_holds_config_metrics_and_evaluation(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    got = {e.step: e.value for e in acc.Scalars("train/loss")}
    want = losses(run)
    assert sorted(got) == sorted(want)
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=1e-6)
    assert "eval/knn/k=20/top1" in acc.Tags()["scalars"]
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_loggers_are_checked_before_training(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="unknown logger 'neptune'"):
        build_config("demo", ["train.loggers=[neptune]"])
    with pytest.raises(ConfigError, match="twice"):
        build_config("demo", ["train.loggers=[wandb,wandb]"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    run = tmp_path / "r"
    args = ["pretrain", "--preset", "demo", *tiny_overrides(run), "train.loggers=[wandb]"]
    assert main([*args, "--no-progress"]) == 2
    assert "pip install 'swav[wandb]'" in capsys.readouterr().err
    assert not run.exists()


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, caplog):
    run = RunDir.of(tmp_path)
    tmp_path.mkdir(exist_ok=True)

    class Flaky:
        calls = 0

        def log(self, values, step):
            Flaky.calls += 1
            raise OSError("disk full")

        def flush(self):
            pass

        def close(self):
            pass

    t = Trackers(run, [], {})
    t.open["flaky"] = Flaky()
    with caplog.at_level("WARNING"):
        t.write({"iteration": 1, "loss": 2.0})
        t.write({"iteration": 2, "loss": 1.0})
    assert Flaky.calls == 1 and "flaky failed (OSError: disk full)" in caplog.text
    assert t.open == {}
