"""The run directory: the one place that knows its file names and formats.

A run directory holds ``config.yaml`` (the resolved configuration), ``checkpoint.pt`` (the
latest training state, format ``swav-run/1``), ``metrics.jsonl`` (one JSON object a line),
``loss.png``, ``tensorboard/``, ``checkpoints/epoch_NNNN.pt`` (periodic copies), ``eval/`` (one
JSON result per evaluation protocol), and what the demo and the report write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from swav.errors import UsageError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "swav-run/1"
"""The ``format`` entry of a run checkpoint; loaders recognise run checkpoints by its prefix."""


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created until something is written)."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        return cls(Path(path).expanduser())

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def healthy_checkpoint(self) -> Path:
        """The last checkpoint written while the run's health signals were good (what a
        collapsed run recovers from)."""
        return self.path / "checkpoint_healthy.pt"

    @property
    def lock_file(self) -> Path:
        """Names the process training in this directory (``RunLock``)."""
        return self.path / "run.lock"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def demo_results(self) -> Path:
        return self.path / "demo_results.json"

    @property
    def report(self) -> Path:
        return self.path / "REPORT.md"

    def periodic_checkpoint(self, epoch: int) -> Path:
        """The copy kept after ``epoch`` epochs (``train.save_every``)."""
        return self.path / "checkpoints" / f"epoch_{epoch:04d}.pt"

    def eval_result(self, protocol: str) -> Path:
        return self.eval_dir / f"{protocol}.json"

    def eval_results(self) -> list[Path]:
        return sorted(self.eval_dir.glob("*.json")) if self.eval_dir.is_dir() else []

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` (empty when there is none yet). A line that does
        not parse (a write cut short by a kill) is skipped."""
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def trim_metrics(self, done: int) -> int:
        """Drop the records of iterations after the first ``done``, the position of the
        checkpoint a run resumes from (a run killed before its checkpoint caught up wrote them;
        the resumed run writes them again), and lines cut short. Records up to the last
        recovery stay: they are the evidence of a collapse. Returns how many were dropped."""
        if not self.metrics.exists():
            return 0
        lines = self.metrics.read_text().splitlines()
        records = [_parse(line) for line in lines]
        recoveries = [i for i, r in enumerate(records) if r and r.get("kind") == "recovery"]
        start = recoveries[-1] + 1 if recoveries else 0
        keep = [line for line, r in zip(lines[:start], records[:start]) if r is not None]
        for line, record in zip(lines[start:], records[start:]):
            if record is None:
                continue
            # per-iteration records carry the step's index, epoch records the steps done
            last = done if record.get("kind") == "epoch" else done - 1
            if record.get("iteration", last) <= last:
                keep.append(line)
        if len(keep) < len(lines):
            tmp = self.metrics.with_name(self.metrics.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.metrics)
        return len(lines) - len(keep)

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove the temporary files of saves cut short by a kill (never read: a save renames
        its temporary file into place only once it is complete)."""
        stale = [*self.path.glob(".*.tmp"), *self.path.glob("*.tmp")]
        if (self.path / "checkpoints").is_dir():
            stale += list((self.path / "checkpoints").glob("*.tmp"))
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def outputs(self) -> list[str]:
        """The names of the run's main files that exist."""
        names = (self.checkpoint, self.config, self.metrics, self.loss_plot)
        return [p.name for p in names if p.exists()]

    def read_config(self) -> dict[str, Any] | None:
        """The resolved configuration as a plain mapping, or None."""
        if not self.config.exists():
            return None
        return yaml.safe_load(self.config.read_text()) or {}


RUN_FILES = (
    "checkpoint.pt",
    "checkpoint_healthy.pt",
    "config.yaml",
    "metrics.jsonl",
    "run.lock",
)
"""The files a run needs to resume; no output of another command may replace them."""


def _is_run_dir(folder: Path) -> bool:
    return (folder / "checkpoint.pt").exists() or (folder / "config.yaml").exists()


def _own_file_of_run(path: Path) -> bool:
    """True for a run directory's own files: checkpoint, healthy copy, configuration, metrics,
    lock, and the periodic copies in ``checkpoints/``."""
    try:
        path = path.parent.resolve() / path.name
    except OSError:
        return False
    if path.name in RUN_FILES and _is_run_dir(path.parent):
        return True
    return path.parent.name == "checkpoints" and _is_run_dir(path.parent.parent)


def guard_output(
    path: str | Path,
    force: bool = False,
    folder: bool = False,
    what: str = "output",
    empty: bool = False,
) -> Path:
    """``path`` as an output, checked before any work is done (nothing is created).

    Refused, with what to do instead: an empty name; a run directory's own files (even with
    ``force``: an evaluation result written over ``checkpoint.pt`` loses the run); a file
    where a folder is wanted or a folder where a file is wanted; an existing file unless
    ``force``; with ``empty``, a folder that has files in it unless ``force``; a location whose
    nearest existing folder is not writable. Returns it as a Path.
    """
    if not str(path).strip():
        raise UsageError(f"{what}: an empty name; give a path")
    path = Path(path).expanduser()
    if not folder and _own_file_of_run(path):
        raise UsageError(
            f"{what} {path} is a run's own file (it would replace what the run needs to "
            "resume): write the output somewhere else"
        )
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; choose another folder")
    if folder and empty and not force and path.is_dir() and any(path.iterdir()):
        raise UsageError(
            f"{what} {path} has files in it: choose an empty or new folder, or pass --force "
            "to write into it"
        )
    if path.exists() and not path.is_dir() and not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file (a device?); give a file path")
    if not folder and path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name (e.g. {path}/out)")
    if not folder and path.exists() and not force:
        raise UsageError(
            f"{what} {path} exists: choose another output, or pass --force to replace it"
        )
    check_writable_dir(path if folder else path.parent, what if folder else f"{what} folder")
    return path


class RunLockedError(UsageError):
    """Another process is training in the run directory."""


class RunLock:
    """The run directory's lock, held by the process that trains in it (rank 0 of a
    distributed run) from before anything is read or written until the run ends.

    An advisory ``flock`` on ``run.lock``, which names its holder (host, process id, start
    time, command). The kernel releases it when the process ends in any way, so the lock of a
    killed run is taken over at once (and the takeover logged); a second run on the same
    directory is refused in one line naming the first. ``run.lock`` stays behind, emptied."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._fd: int | None = None
        self.created_dir = False
        self.previous: dict[str, Any] | None = None
        """The record of a holder that ended without releasing the lock (taken over)."""

    def acquire(self) -> RunLock:
        path = self.run.lock_file
        if not self.run.path.exists():
            self.run.path.mkdir(parents=True)
            self.created_dir = True
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(
                f"{self.run.path} is in use by {describe_holder(_holder_of_lock(path))}: wait "
                "for that run to end (or stop it), or choose another run directory"
            ) from None
        self.previous = _read_holder(path)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty ``run.lock`` and release it; a run directory this lock created and nothing
        else wrote into is removed again."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock
        if self.created_dir and [p.name for p in self.run.path.iterdir()] == ["run.lock"]:
            self.run.lock_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.run.path.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder_of_lock(path: Path, wait_s: float = 2.0) -> dict[str, Any] | None:
    """The record of the process holding the lock; it writes it just after taking the lock,
    so an empty file is read again for up to ``wait_s`` (two runs started together)."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = _read_holder(path)
        if holder or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text().strip()
        record = json.loads(text) if text else None
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}"
        f": {holder.get('command', '')})"
    )


def check_writable(path: str | Path, force: bool = False) -> Path:
    """``path`` as an output file (``guard_output`` for a file)."""
    return guard_output(path, force)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def check_writable_dir(path: str | Path, what: str = "run directory") -> Path:
    """``path`` as a folder to write into, checked before any work is done (nothing is
    created): refused when it, or the nearest existing folder above it, is a file or is not
    writable."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {path}: {probe} is a file, not a folder; choose another {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(
            f"{what} {path}: {probe} is not writable; choose a folder you can write to"
        )
    return path


def is_run_checkpoint(obj: Any) -> bool:
    """True for the contents of a run checkpoint (of any version of the format)."""
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("swav-run")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``."""
    return RunDir.of(run_dir).read_metrics()


def tidy_after_kill(run: RunDir, iteration: int) -> None:
    """What a killed run leaves behind: temporary files of a save, and records written after
    its last checkpoint (the resumed run writes them again)."""
    for p in run.remove_stale_temporaries():
        log.info("removed %s, left by a save that was cut short", p)
    dropped = run.trim_metrics(iteration)
    if dropped:
        log.info(
            "metrics.jsonl: %d records after iteration %d dropped (written again)",
            dropped,
            iteration,
        )
