"""Where and how a run computes: device, autocast precision, seeds and random states, and the
signals that ask a run to stop."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from swav.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu or cuda") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={name}: this machine has no usable CUDA GPU; use train.device=cpu "
            "(or auto, which picks the GPU when there is one)"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    return cpu_kind()[0] != "avx2"


def cpu_kind() -> tuple[str, str]:
    """This CPU's kind, as a short key and in words: AMX (bf16 matrix tiles), AVX-512 BF16
    without AMX (bf16 dot products in vector registers, several times slower than AMX), or
    neither (bf16 emulated, so training runs in fp32). Benchmarks record it."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if "amx_bf16" in flags:
        return "amx", "AMX (bf16 matrix tiles)"
    if "avx512_bf16" in flags:
        return "avx512", "AVX-512 BF16 (no AMX)"
    return "avx2", "AVX2 (no bf16 instructions)"


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


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked; else cuDNN's autotuner on CUDA."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict[str, Any]:
    """The random states a resumed run needs (torch, Python, CUDA when present)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


class StopFlag:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop at the end of the iteration;
    a second Ctrl-C (SIGINT) stops at once. A repeated SIGTERM does not: launchers forward the
    scheduler's SIGTERM to processes that got it already (torchrun under SLURM), and the
    scheduler's SIGKILL follows its grace period anyway."""

    def __init__(self) -> None:
        self.set = False
        self.signum: int | None = None
        """The first signal received (None: none)."""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.set:
            return
        log.warning("signal %d: saving a checkpoint at the end of this iteration", signum)
        self.set, self.signum = True, signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass(frozen=True)
class ThreadBudget:
    """How a training process shares the cores it may use between its intra-op threads (the
    forward and backward) and its loader workers (decoding and cropping)."""

    cores: int
    """Cores this process may use: its CPU affinity divided among the job's processes on
    the node."""
    threads: int
    workers: int
    reason: str
    adaptive: bool = False
    """The threads were not fixed (``train.threads=0``, no ``OMP_NUM_THREADS``) on a CPU with
    more than one core: the run times its steps and follows the load (``engine.threads``)."""

    def describe(self) -> str:
        return (
            f"{self.threads} intra-op thread(s) + {self.workers} loader worker(s) on "
            f"{self.cores} core(s): {self.reason}"
        )


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which batch schedulers and
    ``taskset`` set), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def thread_budget(
    threads: int,
    workers: int,
    device: torch.device,
    local_processes: int = 1,
    cores: int | None = None,
) -> ThreadBudget:
    """Intra-op threads and loader workers sized together to the cores this process may use
    (``cores``, default ``usable_cores()``, divided among ``local_processes``), so that they do
    not oversubscribe them. ``threads`` / ``workers`` given (> 0 / >= 0) are kept; the others
    fill the rest; ``OMP_NUM_THREADS``, when set, stands for ``threads``. On a GPU the workers
    take all cores but one (the main process mostly
    launches kernels). On the CPU the computation is the bottleneck: its threads take every
    core, and a quarter as many workers (at least one) crop ahead in the gaps, waiting while
    their prefetched batches are not taken (measured in ``benchmarks/data.py --only cores``)."""
    share = max(1, (cores or usable_cores()) // max(1, local_processes))
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    given_threads = threads > 0 or (env_threads.isdigit() and int(env_threads) > 0)
    if threads <= 0 and env_threads.isdigit() and int(env_threads) > 0:
        threads = int(env_threads)  # set for this process (torchrun sets 1): kept
    auto, both_given = threads <= 0 and workers < 0, threads > 0 and workers >= 0
    if workers < 0:
        if device.type == "cuda":
            workers = max(1, share - 1)
        elif threads <= 0:
            workers = max(1, share // 4) if share > 1 else 0
        else:
            workers = max(0, share - threads)
    if threads <= 0:
        threads = share if device.type != "cuda" else max(1, share - workers)
    if device.type == "cuda":
        reason = "workers feed the GPU; one core launches its kernels"
    elif auto:
        reason = "the computation takes every core; the workers crop ahead in its gaps"
    elif both_given and max(threads, workers) > share:
        reason = (
            "as set; more than the cores, so they compete (lower train.threads or data.workers)"
        )
    else:
        reason = "as set"
    if env_threads.isdigit() and threads == int(env_threads):
        reason += f" (threads from OMP_NUM_THREADS={env_threads}; train.threads overrides it)"
    adaptive = device.type != "cuda" and not given_threads and threads > 1
    if adaptive:
        reason += "; the step is timed with fewer threads too, and the fastest kept"
    return ThreadBudget(share, threads, workers, reason, adaptive)
