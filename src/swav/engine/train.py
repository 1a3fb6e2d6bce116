"""The pretraining loop: multi-crop batches -> SwAV forward -> queue + Sinkhorn codes ->
swapped prediction loss -> LARS step, with checkpoints, resume, metrics and health checks.

The whole algorithm of one iteration is in ``swav_loss_step``; ``pretrain`` adds the engine
around it (schedules, precision, distributed, run directory).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from swav.config import Config, ConfigError, save_config, validate
from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
from swav.data.multicrop import MultiCrop
from swav.data.sources import ImageSource, limit_source, open_source
from swav.engine.checkpoint import atomic_save, keep_copy, safe_load
from swav.engine.distributed import DistInfo, any_rank, init_distributed, shutdown
from swav.engine.metrics import CollapseMonitor, MetricsWriter, NonFiniteLossError, code_stats
from swav.engine.optim import build_optimizer, lr_schedule, set_lr
from swav.model.swav import SwAV, build_model
from swav.objective.loss import swapped_prediction_loss
from swav.objective.queue import FeatureQueue
from swav.objective.sinkhorn import sinkhorn

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "swav-run/1"


class ConfigMismatchError(RuntimeError):
    """The run directory holds a checkpoint of a different configuration."""


# ----------------------------------------------------------------------------- the algorithm


def freeze_prototypes(model: SwAV, iteration: int, freeze_iters: int) -> bool:
    """Drop the prototypes' gradients during the first ``freeze_iters`` iterations (Sec. 4 of
    the paper's implementation details). With ``grad = None`` the optimiser skips them entirely:
    no momentum and no weight decay. Returns True while frozen."""
    if iteration >= freeze_iters or model.prototypes is None:
        return False
    for p in model.prototypes.parameters():
        p.grad = None
    return True


def swav_loss_step(
    model: SwAV,
    out,
    batch_size: int,
    crops_for_assign: list[int],
    queue: FeatureQueue | None,
    epsilon: float = 0.05,
    iterations: int = 3,
    temperature: float = 0.1,
    global_sinkhorn: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loss for one forward output over all crops, and the codes of the first assigned crop
    (first head) for health statistics. Pushes the current embeddings into the queue."""
    n_crops = out.embeddings.shape[0] // batch_size
    losses, first_codes = [], None
    queue_scores = {}
    if queue is not None and queue.active:
        for i, crop in enumerate(crops_for_assign):
            queue_scores[crop] = queue.scores(i, model.prototypes)
    for h, scores in enumerate(out.scores):
        per_crop = list(scores.split(batch_size))
        codes = []
        for crop in crops_for_assign:
            with torch.no_grad():
                s = per_crop[crop].detach()
                if crop in queue_scores:
                    s = torch.cat([queue_scores[crop][h].to(s.dtype), s])
                q = sinkhorn(s, epsilon, iterations, distributed=global_sinkhorn)[-batch_size:]
            codes.append(q)
        if first_codes is None:
            first_codes = codes[0]
        losses.append(
            swapped_prediction_loss(per_crop[:n_crops], codes, crops_for_assign, temperature)
        )
    if queue is not None:
        emb = out.embeddings.detach().split(batch_size)
        queue.push([emb[c] for c in crops_for_assign])
    return torch.stack(losses).mean(), first_codes


# ----------------------------------------------------------------------------- the engine


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info else 0)
        return torch.device("cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    iterations: int
    last_loss: float
    interrupted: bool = False
    corrupt: list[str] = field(default_factory=list)
    model: SwAV | None = None


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop at the end of the iteration."""

    def __init__(self) -> None:
        self.set = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal stops at once
            raise KeyboardInterrupt
        log.warning("signal %d: saving a checkpoint at the end of this iteration", signum)
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_training_source(cfg: Config) -> ImageSource:
    src = open_source(
        cfg.data.source, cfg.data.split, cfg.data.root, cfg.data.download, cfg.train.seed
    )
    return limit_source(src, cfg.data.limit, cfg.train.seed)


def build_swav_model(cfg: Config) -> SwAV:
    m = cfg.model
    return build_model(
        m.arch,
        m.hidden_mlp,
        m.output_dim,
        m.n_prototypes[0] if len(m.n_prototypes) == 1 else m.n_prototypes,
        small_stem=m.small_stem,
    )


def pretrain(
    cfg: Config,
    allow_config_change: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train SwAV as configured, resuming from ``run_dir/checkpoint.pt`` when it exists.

    Args:
        cfg: the configuration (validated again here, with the dataset size and world size).
        allow_config_change: resume even if the checkpoint was written with other settings.
        progress: show a progress bar (main process only).
        stop_after_epoch: stop (as if interrupted) once this many epochs are done.
    """
    validate(cfg)
    info = init_distributed(resolve_device(cfg.train.device))
    try:
        return _pretrain(cfg, info, allow_config_change, progress, stop_after_epoch)
    finally:
        shutdown(info)


def _pretrain(
    cfg: Config,
    info: DistInfo,
    allow_config_change: bool,
    progress: bool,
    stop_after_epoch: int | None,
) -> TrainResult:
    device = resolve_device(cfg.train.device, info)
    validate(cfg, world_size=info.world_size)
    amp_dtype = resolve_precision(cfg.train.precision, device)
    run_dir = Path(cfg.run_dir).expanduser()
    ckpt_path = run_dir / CHECKPOINT

    # Refuse a mismatched run directory before reading any data.
    resume_state = None
    if ckpt_path.exists():
        resume_state = safe_load(ckpt_path)
        if resume_state.get("fingerprint") != cfg.fingerprint() and not allow_config_change:
            raise ConfigMismatchError(
                f"{run_dir} holds a checkpoint of a different configuration: choose another "
                "run_dir, or pass --allow-config-change (allow_config_change=True) to resume "
                "with the new settings"
            )

    source = build_training_source(cfg)
    validate(cfg, world_size=info.world_size, dataset_size=len(source))
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.train.seed)

    model = build_swav_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bs = cfg.train.batch_size
    sampler = EpochSampler(
        len(source), bs, cfg.train.seed, info.rank, info.world_size, cfg.train.iters_per_epoch
    )
    iters = sampler.batches
    if iters < 1:
        raise ConfigError(
            f"train.batch_size: {len(source)} images give no full global batch of "
            f"{bs * info.world_size}"
        )
    scale = bs * info.world_size / 256 if cfg.optim.scale_lr else 1.0
    o = cfg.optim
    schedule = lr_schedule(
        o.base_lr * scale,
        o.final_lr * scale,
        cfg.train.epochs,
        iters,
        o.warmup_epochs,
        o.start_warmup * scale,
    )
    optimizer = build_optimizer(
        model,
        o.optimizer,
        schedule[0],
        o.momentum,
        o.weight_decay,
        o.lars_eta,
        o.lars_exclude_bias_norm,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    queue = None
    s = cfg.swav
    if s.queue_length:
        queue = FeatureQueue(
            len(s.crops_for_assign), s.queue_length // info.world_size, model.embedding_dim
        ).to(device)

    start_epoch, start_batch, corrupt_total = 0, 0, []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        if queue is not None and resume_state.get("queue") is not None:
            q = dict(resume_state["queue"])
            per_rank = q.pop("per_rank", None)
            if per_rank is not None and per_rank.shape[0] == info.world_size:
                q["embeddings"] = per_rank[info.rank]
            queue.load_state_dict(q)
        start_epoch, start_batch = resume_state["epoch"], resume_state["next_batch"]
        corrupt_total = list(resume_state.get("corrupt", []))
        set_rng_state(resume_state["rng"])
        if info.is_main:
            log.info("resuming %s at epoch %d, batch %d", run_dir, start_epoch, start_batch)
        del resume_state

    core = model
    if info.enabled:
        if device.type == "cuda" and cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            core = model
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = model
    if cfg.train.compile:
        forward = torch.compile(model)

    transform = MultiCrop(cfg.multicrop)
    dataset = MultiCropDataset(source, transform, decode_only=cfg.multicrop.on_device)
    loader = make_loader(dataset, sampler, bs, cfg.data.workers, device.type == "cuda")

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    writer = MetricsWriter(run_dir, enabled=info.is_main)
    monitor = CollapseMonitor(
        core.n_prototypes, cfg.train.collapse_patience, s.freeze_prototypes_niters
    )
    usage = torch.zeros(core.n_prototypes[0], device=device)

    def checkpoint(epoch: int, next_batch: int) -> None:
        queue_state = None
        if queue is not None:
            queue_state = queue.state_dict()
            if info.enabled:  # every rank's queue, so that each rank resumes with its own
                parts = [torch.zeros_like(queue.embeddings) for _ in range(info.world_size)]
                torch.distributed.all_gather(parts, queue.embeddings.contiguous())
                queue_state = {
                    "embeddings": queue.embeddings.cpu(),
                    "filled": queue.filled,
                    "per_rank": torch.stack(parts).cpu(),
                }
        if not info.is_main:
            return
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "next_batch": next_batch,
                "iteration": epoch * iters + next_batch,
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "queue": queue_state,
                "rng": rng_state(),
                "config": cfg.to_dict(),
                "fingerprint": cfg.fingerprint(),
                "corrupt": corrupt_total,
            },
            ckpt_path,
        )

    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    last_loss = float("nan")
    interrupted = False
    epochs_done = start_epoch
    warned_corrupt = False
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            first = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, first)
            use_queue = queue is not None and epoch >= s.epoch_queue_starts
            model.train()
            bar = None
            if progress and info.is_main:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=iters,
                    initial=first,
                    desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                    unit="it",
                    dynamic_ncols=True,
                    leave=False,
                )
            pending: list[tuple[int, Tensor, float]] = []
            t_window, n_window = time.perf_counter(), 0
            epoch_corrupt = 0
            usage.zero_()
            batch_idx = first
            for batch_idx, (crops, _labels, _idx, bad) in enumerate(loader, start=first):
                it = epoch * iters + batch_idx
                if bad:
                    epoch_corrupt += len(bad)
                    corrupt_total += [b.name for b in bad]
                    if not warned_corrupt:
                        warned_corrupt = True
                        log.warning(
                            "skipping unreadable image %s (%s); further ones are "
                            "counted and reported at the end of the epoch",
                            bad[0].name,
                            bad[0].error,
                        )
                if crops and cfg.multicrop.on_device:  # decoded images: crop them here
                    crops = transform.batch(
                        [d.image for d in crops], [d.generator() for d in crops], device
                    )
                if not crops or crops[0].shape[0] < 2:
                    continue
                lr = float(schedule[it])
                set_lr(optimizer, lr)
                crops = [
                    c.to(
                        device,
                        non_blocking=True,
                        memory_format=torch.channels_last
                        if cfg.train.channels_last
                        else torch.preserve_format,
                    )
                    for c in crops
                ]
                b = crops[0].shape[0]
                with autocast:
                    out = forward(crops)
                loss, codes = swav_loss_step(
                    core,
                    out,
                    b,
                    s.crops_for_assign,
                    queue if use_queue else None,
                    s.epsilon,
                    s.sinkhorn_iterations,
                    s.temperature,
                    s.global_sinkhorn,
                )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                freeze_prototypes(core, it, s.freeze_prototypes_niters)
                scaler.step(optimizer)
                scaler.update()
                usage.index_add_(0, codes.argmax(1), torch.ones(b, device=device))
                monitor.queue_active = use_queue and queue.active
                pending.append((it, loss.detach(), lr))
                n_window += b * info.world_size
                stop_now = stop.set
                if info.enabled:  # ranks agree on when to stop, at log boundaries only
                    stop_now = len(pending) >= cfg.train.log_every and any_rank(stop.set, device)
                if len(pending) >= cfg.train.log_every or stop_now:
                    last_loss = _flush(
                        pending,
                        epoch,
                        writer,
                        monitor,
                        codes,
                        bar,
                        n_window / (time.perf_counter() - t_window),
                        ckpt_path,
                    )
                    pending, t_window, n_window = [], time.perf_counter(), 0
                if bar is not None:
                    bar.update(1)
                if stop_now:
                    checkpoint(epoch, batch_idx + 1)
                    interrupted = True
                    break
            if pending:
                last_loss = _flush(
                    pending,
                    epoch,
                    writer,
                    monitor,
                    codes,
                    bar,
                    n_window / max(time.perf_counter() - t_window, 1e-9),
                    ckpt_path,
                )
            if bar is not None:
                bar.close()
            if interrupted:
                break
            used = int((usage > 0).sum())
            if epoch_corrupt:
                log.warning(
                    "epoch %d: skipped %d unreadable images (%d in all); see "
                    "checkpoint['corrupt'] for their names",
                    epoch + 1,
                    epoch_corrupt,
                    len(corrupt_total),
                )
            writer.write(
                {
                    "kind": "epoch",
                    "epoch": epoch + 1,
                    "iteration": (epoch + 1) * iters,
                    "loss": last_loss,
                    "prototypes_used": used,
                    "corrupt_images": epoch_corrupt,
                    "queue": bool(use_queue and queue.active),
                }
            )
            writer.flush()
            if info.is_main:
                log.info(
                    "epoch %d/%d  loss %.4f  prototypes used %d/%d",
                    epoch + 1,
                    cfg.train.epochs,
                    last_loss,
                    used,
                    core.n_prototypes[0],
                )
            checkpoint(epoch + 1, 0)
            if info.is_main and cfg.train.save_every and (epoch + 1) % cfg.train.save_every == 0:
                keep_copy(ckpt_path, run_dir / "checkpoints" / f"epoch_{epoch + 1:04d}.pt")
            start_batch = 0
            epochs_done = epoch + 1
            stop_now = any_rank(stop.set, device) if info.enabled else stop.set
            if stop_now or (stop_after_epoch is not None and epochs_done >= stop_after_epoch):
                interrupted = epochs_done < cfg.train.epochs
                break
    writer.close()
    if info.is_main and not interrupted:
        from swav.viz.plots import plot_loss_curve

        try:
            plot_loss_curve(run_dir)
        except Exception as e:  # plotting is a convenience; never lose a run over it
            log.warning("could not draw the loss curve: %s", e)
    return TrainResult(
        run_dir, epochs_done, epochs_done * iters, last_loss, interrupted, corrupt_total, core
    )


def _flush(pending, epoch, writer, monitor, codes, bar, images_per_s, ckpt_path) -> float:
    """Move the pending losses to the host (the only sync of the loop), log, check health."""
    values = torch.stack([p[1] for p in pending]).float().cpu().tolist()
    entropy, used = code_stats(codes)
    entropy, used = float(entropy), int(used)
    monitor.check_usage(used, codes.shape[0], codes.shape[1], monitor.queue_active)
    for (it, _, lr), v in zip(pending, values):
        if not math.isfinite(v):
            raise NonFiniteLossError(
                f"the loss became {v} at iteration {it} (epoch {epoch + 1}); training stopped "
                f"and the last good checkpoint ({ckpt_path}) is intact. Usual causes: a learning "
                "rate too high for the batch size (try optim.base_lr lower or a longer warmup), "
                "fp16 overflow (try train.precision=bf16 or fp32), or broken input data."
            )
        monitor.update(it, v)
        writer.write({"iteration": it, "epoch": epoch + 1, "loss": v, "lr": lr})
    last = pending[-1][0]
    writer.write(
        {
            "kind": "health",
            "iteration": last,
            "epoch": epoch + 1,
            "code_entropy": entropy,
            "prototypes_in_batch": used,
            "images_per_s": images_per_s,
        }
    )
    if bar is not None:
        bar.set_postfix(
            loss=f"{values[-1]:.3f}",
            lr=f"{pending[-1][2]:.3g}",
            img_s=f"{images_per_s:.0f}",
            refresh=False,
        )
    writer.flush()
    return values[-1]
