"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow.

``train.loggers=[tensorboard,wandb,mlflow]`` names them (``metrics.jsonl`` is always written).
Each receives the run's configuration at the start, every scalar of every record
``metrics.jsonl`` gets (step = iteration), and the results of ``swav eval`` on the run
directory. A resumed run continues the same tracker runs: their ids are kept in
``RUN_DIR/trackers.json``.

Where they write follows each tool's own settings:
- TensorBoard: ``RUN_DIR/tensorboard``.
- W&B: ``WANDB_PROJECT`` (default ``swav``), ``WANDB_MODE=offline`` for no network
  (``wandb sync`` later), ``WANDB_DIR`` (default the run directory).
- MLflow: ``MLFLOW_TRACKING_URI`` (default a file store in ``RUN_DIR/mlruns``),
  ``MLFLOW_EXPERIMENT_NAME`` (default ``swav``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import uuid
from typing import Any

from swav.engine.run_dir import RunDir
from swav.errors import SwAVError
from swav.values import LOGGERS as PACKAGES

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"


class TrackerError(SwAVError, RuntimeError):
    """A tracker named in ``train.loggers`` could not start."""


def _scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in record.items():
        if k in ("iteration", "epoch", "kind"):
            continue
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, int | float):
            out[f"{prefix}/{k}"] = float(v)
    return out


def flat_results(record: dict[str, Any]) -> dict[str, float]:
    """An evaluation record's numbers as ``eval/<protocol>/<path>`` (``eval/knn/k=20/top1``)."""
    out: dict[str, float] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}/{k}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)

    walk(record.get("results", {}), f"eval/{record.get('protocol', 'eval')}")
    return out


class _TensorBoard:
    def __init__(self, run: RunDir, config: dict[str, Any], state: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(run.tensorboard))
        if not state.get("config_written"):
            text = "```yaml\n" + json.dumps(config, indent=2, default=str) + "\n```"
            self.w.add_text("config", text, 0)
            state["config_written"] = True

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def flush(self) -> None:
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class _WandB:
    def __init__(self, run: RunDir, config: dict[str, Any], state: dict[str, Any]) -> None:
        import wandb

        state.setdefault("id", uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "swav"),
            name=run.path.name,
            id=state["id"],
            resume="allow",
            dir=os.environ.get("WANDB_DIR", str(run.path)),
            config=config,
            reinit="create_new",
        )
        state["project"] = self.run.project
        state["dir"] = str(self.run.dir)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def flush(self) -> None:
        pass  # W&B sends (or, offline, writes) in its own process

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run: RunDir, config: dict[str, Any], state: dict[str, Any]) -> None:
        import mlflow

        uri = state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store in the run directory: no server, no database package
            uri = (run.path / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
        state["tracking_uri"] = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        if "run_id" not in state:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "swav")
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            created = self.client.create_run(experiment, run_name=run.path.name)
            state["run_id"], state["experiment"] = created.info.run_id, name
            for key, value in _flat_config(config).items():
                self.client.log_param(state["run_id"], key, value)
        else:
            self.client.update_run(state["run_id"], status="RUNNING")
        self.run_id = state["run_id"]

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.log(values, step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _mlflow_key(key: str) -> str:
    return key.replace("=", "_")  # MLflow keys allow letters, digits, _ - . / and space


def _flat_config(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for k, v in values.items():
                out[f"{section}.{k}"] = json.dumps(v, default=str)[:500]
        else:
            out[section] = json.dumps(values, default=str)[:500]
    return out


_KINDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


class Trackers:
    """The trackers a run names, opened on its main process; each call goes to every one.

    A tracker that fails while the run trains is reported once and dropped: the run and its
    ``metrics.jsonl`` go on."""

    def __init__(self, run: RunDir, names: list[str], config: dict[str, Any]) -> None:
        self.run = run
        self.state = _read_state(run)
        self.open: dict[str, Any] = {}
        for name in names:
            if name in _KINDS:
                mine = self.state.setdefault(name, {})
                try:
                    self.open[name] = _KINDS[name](run, config, mine)
                except Exception as e:  # before training: stop and say why
                    self.close()
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    raise TrackerError(
                        f"train.loggers: {name} could not start ({type(e).__name__}: {first}); "
                        f"fix its settings or leave {name} out of train.loggers"
                    ) from e
        if self.open:
            _write_state(run, self.state)
            log.info("logging to %s (and metrics.jsonl)", ", ".join(self.open))

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.open.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # a tracker's failure never stops training
                log.warning(
                    "%s failed (%s: %s); it is left out from now on", name, type(e).__name__, e
                )
                self.open.pop(name)

    def write(self, record: dict[str, Any]) -> None:
        if self.open and "iteration" in record:
            values = _scalars(record, record.get("kind", "train"))
            if values:
                self._each("log", values, int(record["iteration"]))

    def summary(self, values: dict[str, float], step: int) -> None:
        self._each("summary", values, step)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")
        self.open.clear()


def _read_state(run: RunDir) -> dict[str, Any]:
    path = run.path / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(run: RunDir, state: dict[str, Any]) -> None:
    (run.path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def log_evaluation(run: RunDir, record: dict[str, Any]) -> list[str]:
    """Send an evaluation's results to the trackers the run trained with (the same tracker
    runs); returns their names. Nothing when the run named none."""
    config = run.read_config() or {}
    names = [n for n in (config.get("train") or {}).get("loggers") or [] if n in _KINDS]
    names = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is not None]
    if not names:
        return []
    epochs = [m for m in run.read_metrics() if m.get("kind") == "epoch"]
    step = int(epochs[-1]["iteration"]) if epochs else 0
    trackers = Trackers(run, names, config)
    trackers.summary(flat_results(record), step)
    sent = list(trackers.open)
    trackers.close()
    return sent
