"""Multi-process training with torch.distributed, launched by torchrun, by SLURM's srun (see
``swav.engine.launch``) or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from swav.engine.launch import resolve_launch
from swav.errors import SwAVError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False
    """True when ``init_distributed`` created the process group (and so must destroy it)."""
    local_world_size: int = 1
    """Processes of the job on this node."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group of the launch (torchrun, srun, or none: see
    ``swav.engine.launch``), with NCCL on CUDA and Gloo on the CPU."""
    if dist.is_available() and dist.is_initialized():
        on_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, local_world_size=on_node)
    launch = resolve_launch(os.environ)
    if launch.world_size <= 1:
        return DistInfo()
    os.environ.update(launch.env())  # srun's variables, as env:// reads them
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    info = DistInfo(
        dist.get_rank(), dist.get_world_size(), launch.local_rank, True, launch.local_world_size
    )
    rendezvous = f"{launch.master_addr}:{launch.master_port}"
    log.info(
        "process %d of %d (%s, launched by %s, rendezvous %s)",
        info.rank,
        info.world_size,
        backend,
        launch.launcher,
        rendezvous,
    )
    return info


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group cleanly (a process that exits with Gloo threads alive aborts);
    after a lost peer (``clean=False``) without waiting for the others at a barrier."""
    if info.owned and dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


class PeerLostError(SwAVError, RuntimeError):
    """Another process of a distributed run stopped (killed, out of memory, its node lost)."""


_PEER_FAILURE_WORDS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Socket Timeout",
    "timed out",
    "NCCL communicator was aborted",
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process is gone."""
    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(error, backend_error):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error) for w in _PEER_FAILURE_WORDS)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a collective: call it at the
    same point on every rank)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
