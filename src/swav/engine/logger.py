"""What a run reports while it trains: one logger owns the metric buffer, the health checks,
the progress bar, ``metrics.jsonl`` and the trackers (``train.loggers``), and flushes them all
through one path.

Losses stay on the device between flushes: moving them to the host is the loop's only
synchronisation, once every ``train.log_every`` iterations.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch import Tensor

from swav.data.loader import Corrupt
from swav.engine.health import Collapse, CollapseMonitor, NonFiniteLossError, code_stats
from swav.engine.run_dir import RunDir
from swav.engine.trackers import Trackers

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``; sends the same records to the
    run's trackers (``train.loggers``: TensorBoard, W&B, MLflow)."""

    def __init__(
        self,
        run: RunDir,
        enabled: bool = True,
        loggers: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self._f: IO[str] | None = open(run.metrics, "a") if enabled else None  # noqa: SIM115
        self.trackers = Trackers(run, loggers, config or {}) if enabled and loggers else None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.write(record)

    def flush(self) -> None:
        if self._f:
            self._f.flush()
        if self.trackers is not None:
            self.trackers.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None
        if self.trackers is not None:
            self.trackers.close()


class TrainLogger:
    """Per-iteration losses and learning rates, health records at each flush, one record per
    epoch, the progress bar, and the warnings (collapse, skipped images).

    Args:
        run: the run directory (written only when ``enabled``, i.e. on the main process).
        n_prototypes: K of each prototype head (for ln K and the usage counter).
        epochs, iters_per_epoch: the run's length, for the progress bar and records.
        log_every: iterations between flushes.
        monitor: the collapse monitor.
        progress: show a progress bar (main process only).
    """

    def __init__(
        self,
        run: RunDir,
        enabled: bool,
        n_prototypes: list[int],
        epochs: int,
        iters_per_epoch: int,
        log_every: int,
        monitor: CollapseMonitor,
        progress: bool,
        device: torch.device,
        distributed: bool = False,
        loggers: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.distributed = distributed
        """Losses and health statistics are reduced over all processes (the same on each)."""
        self.run, self.enabled, self.n_prototypes = run, enabled, n_prototypes
        self.epochs, self.iters, self.log_every = epochs, iters_per_epoch, log_every
        self.monitor, self.progress = monitor, progress and enabled
        self.writer = MetricsWriter(run, enabled, loggers, config)
        self.usage = torch.zeros(n_prototypes[0], device=device)
        self.last_loss = float("nan")
        """The loss of the last iteration flushed."""
        self.epoch_loss = float("nan")
        """The mean loss of the last epoch that ended (what epoch records and lines show)."""
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._pending: list[tuple[int, Tensor, float]] = []
        self._codes: Tensor | None = None
        self._spread: Tensor | None = None
        self._bar: Any = None
        self._epoch = 0
        self._corrupt_in_epoch = 0
        self._warned_corrupt = False
        self._window_start, self._window_images = time.perf_counter(), 0
        self._started = self._window_start
        """When this session's training began (epoch records carry the seconds since)."""

    def start_epoch(self, epoch: int, first_batch: int) -> None:
        """Begin (or, from ``first_batch`` on, resume) an epoch. A resumed epoch's mean loss
        counts the iterations before the checkpoint from their records in ``metrics.jsonl``."""
        self._epoch, self._corrupt_in_epoch = epoch, 0
        self._epoch_sum, self._epoch_count = 0.0, 0
        if first_batch and self.enabled:
            start, resume = epoch * self.iters, epoch * self.iters + first_batch
            losses = {
                r["iteration"]: r["loss"]  # the last record of an iteration (after a rewind)
                for r in self.run.read_metrics()
                if "kind" not in r and start <= r.get("iteration", -1) < resume
            }
            self._epoch_sum, self._epoch_count = float(sum(losses.values())), len(losses)
        self.usage.zero_()
        self._window_start, self._window_images = time.perf_counter(), 0
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.iters,
                initial=first_batch,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="it",
                dynamic_ncols=True,
                leave=False,
            )

    def skipped(self, bad: list[Corrupt]) -> list[str]:
        """Counts unreadable images (warning once per run); returns their names."""
        self._corrupt_in_epoch += len(bad)
        if not self._warned_corrupt:
            self._warned_corrupt = True
            log.warning(
                "skipping unreadable image %s (%s); further ones are counted and reported at "
                "the end of the epoch",
                bad[0].name,
                bad[0].error,
            )
        return [b.name for b in bad]

    def step(
        self,
        iteration: int,
        loss: Tensor,
        lr: float,
        codes: Tensor,
        images: int,
        spread: Tensor | None = None,
    ) -> None:
        """Record one iteration (no host synchronisation)."""
        self._pending.append((iteration, loss.detach(), lr))
        self._codes, self._spread = codes, spread
        self.usage.index_add_(0, codes.argmax(1), torch.ones(codes.shape[0], device=codes.device))
        self._window_images += images

    def _reduced(self, losses: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(losses, code entropy, prototypes used, embedding spread) of the last flush window:
        this process's, or with several processes the mean over them (prototypes used: those
        used by any)."""
        assert self._codes is not None
        entropy, _ = code_stats(self._codes)
        hit = torch.zeros(self._codes.shape[1], device=self._codes.device)
        hit.index_fill_(0, self._codes.argmax(1), 1.0)
        spread = self._spread if self._spread is not None else torch.zeros((), device=hit.device)
        if self.distributed:
            world = dist.get_world_size()
            packed = torch.cat(
                [losses.to(hit.device), entropy.reshape(1).float(), spread.reshape(1).float()]
            )
            dist.all_reduce(packed)
            packed /= world
            dist.all_reduce(hit, op=dist.ReduceOp.MAX)
            n = len(losses)
            losses, entropy, spread = packed[:n], packed[n], packed[n + 1]
        return losses, entropy, hit.sum(), spread

    @property
    def due(self) -> bool:
        """True when ``log_every`` iterations wait to be flushed."""
        return len(self._pending) >= self.log_every

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def flush(self, queue_active: bool, checkpoint_hint: str) -> Collapse | None:
        """Move the pending losses to the host, check them, write them and a health record;
        the collapse, when the health signals declare one now.

        Raises ``NonFiniteLossError`` (naming ``checkpoint_hint``) on a NaN or infinite loss."""
        if not self._pending or self._codes is None:
            return None
        pending, self._pending = self._pending, []
        stats = self._reduced(torch.stack([p[1] for p in pending]).float())
        values = stats[0].cpu().tolist()
        entropy, used = float(stats[1]), float(stats[2])
        spread = None if self._spread is None else float(stats[3])
        batch, k = self._codes.shape
        self.monitor.check_usage(int(used), batch, k, queue_active)
        for (it, _, lr), v in zip(pending, values):
            if not math.isfinite(v):
                raise NonFiniteLossError(_non_finite_message(v, it, self._epoch, checkpoint_hint))
            self.writer.write({"iteration": it, "epoch": self._epoch + 1, "loss": v, "lr": lr})
        losses = [(it, v) for (it, _, _), v in zip(pending, values)]
        self._epoch_sum += float(sum(values))
        self._epoch_count += len(values)
        collapse = self.monitor.observe(losses, entropy, spread, queue_active)
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        images_per_s = self._window_images / elapsed
        self.writer.write(
            {
                "kind": "health",
                "iteration": pending[-1][0],
                "epoch": self._epoch + 1,
                "code_entropy": entropy,
                "prototypes_in_batch": int(used),
                "embedding_spread": spread,
                "healthy": self.monitor.healthy,
                "images_per_s": images_per_s,
            }
        )
        if collapse is not None:
            log.warning("%s", collapse.describe())
            self.writer.write({"kind": "collapse", **asdict(collapse)})
        if self._bar is not None:
            shown = {"loss": f"{values[-1]:.3f}", "lr": f"{pending[-1][2]:.3g}"}
            left = self.epochs * self.iters - (pending[-1][0] + 1)
            eta = run_eta(left, elapsed / len(pending))
            self._bar.set_postfix(**shown, img_s=f"{images_per_s:.0f}", run_left=eta)
        self.writer.flush()
        self.last_loss = values[-1]
        self._window_start, self._window_images = time.perf_counter(), 0
        return collapse

    def record(self, kind: str, **fields: Any) -> None:
        """Write one record of ``kind`` (a recovery, the end of the run) and flush."""
        self.writer.write({"kind": kind, **fields})
        self.writer.flush()

    def end_epoch(self, queue_active: bool, corrupt_total: int) -> None:
        """Close the epoch's progress bar; write and log the epoch's record."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.distributed:  # prototypes used by any process's images, images every one skipped
            dist.all_reduce(self.usage)
            skipped = torch.tensor([float(self._corrupt_in_epoch)], device=self.usage.device)
            dist.all_reduce(skipped)
            self._corrupt_in_epoch = int(skipped.item())
        used = int((self.usage > 0).sum())
        epoch = self._epoch + 1
        if self._epoch_count:
            self.epoch_loss = self._epoch_sum / self._epoch_count
        if self._corrupt_in_epoch:
            log.warning(
                "epoch %d: skipped %d unreadable images (%d in all); see "
                "checkpoint['corrupt'] for their names",
                epoch,
                self._corrupt_in_epoch,
                corrupt_total,
            )
        self.writer.write(
            {
                "kind": "epoch",
                "epoch": epoch,
                "seconds": round(time.perf_counter() - self._started, 1),
                "iteration": epoch * self.iters,
                "loss": self.epoch_loss,
                "last_loss": self.last_loss,
                "prototypes_used": used,
                "corrupt_images": self._corrupt_in_epoch,
                "queue": queue_active,
                "healthy": self.monitor.healthy,
            }
        )
        self.writer.flush()
        if self.enabled:
            log.info(
                "epoch %d/%d  loss %.4f (mean of the epoch)  prototypes used %d/%d",
                epoch,
                self.epochs,
                self.epoch_loss,
                used,
                self.n_prototypes[0],
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.writer.close()


def run_eta(iterations_left: int, seconds_per_iteration: float) -> str:
    """The time the whole run still needs, as ``1d 02:03:04`` / ``02:03:04``."""
    total = int(round(max(0, iterations_left) * seconds_per_iteration))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _non_finite_message(value: float, iteration: int, epoch: int, checkpoint: str) -> str:
    kept = (
        f"the last good checkpoint ({checkpoint}) is intact"
        if Path(checkpoint).is_file()
        else "no checkpoint had been written yet"
    )
    return (
        f"the loss became {value} at iteration {iteration} (epoch {epoch + 1}); training stopped "
        f"and {kept}. Usual causes: a learning rate "
        "too high for the batch size (try optim.base_lr lower or a longer warmup), fp16 "
        "overflow (try train.precision=bf16 or fp32), or broken input data."
    )
