"""How this process was launched: by torchrun, by SLURM's ``srun``, or alone.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, which
``torch.distributed`` reads (``env://``). ``srun`` starts every task itself and sets SLURM's own
variables instead; ``resolve_launch`` turns them into the same five, so that the process group
forms the same way. Every form SLURM writes is read: node lists such as ``node[01-04,07]``,
``gpu-[1-2]-[a-b]`` or ``a1,b[3-4]``, and tasks per node such as ``2(x3),1``. Variables that
disagree (a rank beyond the world, a task count that is not the sum over the nodes) are refused
with one line that names them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from swav.errors import UsageError

DEFAULT_PORT = 29500


class LaunchError(UsageError):
    """The launch variables of the environment disagree or cannot be read."""


@dataclass(frozen=True)
class Launch:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "single"
    """``torchrun``, ``slurm`` or ``single``."""
    local_world_size: int = 1
    """Processes of the job on this node (they share its cores)."""

    def env(self) -> dict[str, str]:
        """The variables ``torch.distributed``'s ``env://`` initialisation reads."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"node list {text!r}: a ']' without its '['")
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"node list {text!r}: a '[' without its ']'")
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _expand_range_list(spec: str, text: str) -> list[str]:
    """``01-04,07`` -> 01, 02, 03, 04, 07 (zero padding kept)."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise LaunchError(f"node list {text!r}: cannot read the range {item!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise LaunchError(f"node list {text!r}: the range {item!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(text: str) -> list[str]:
    """The host names of a SLURM node list, in SLURM's order."""
    hosts: list[str] = []
    for pattern in _split_top_level(text):
        pieces = re.split(r"(\[[^\]]*\])", pattern)
        choices = [
            _expand_range_list(p[1:-1], text) if p.startswith("[") else [p] for p in pieces if p
        ]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    if not hosts:
        raise LaunchError(f"node list {text!r} names no node")
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """``2(x3),1`` -> [2, 2, 2, 1] (SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE)."""
    out: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise LaunchError(f"tasks per node {text!r}: cannot read {item!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as e:
        raise LaunchError(f"{name}={env[name]!r} is not a number") from e


def _port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return _int(env, "MASTER_PORT")
    job = env.get("SLURM_JOB_ID", "")
    # one port per job, so that jobs sharing a node do not collide
    return 15000 + int(job) % 20000 if job.isdigit() else DEFAULT_PORT


def _slurm(env: Mapping[str, str]) -> Launch:
    rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    nodes_text = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    nodes = expand_nodelist(nodes_text) if nodes_text else ["127.0.0.1"]
    per_node_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not 0 <= rank < world:
        raise LaunchError(f"SLURM_PROCID={rank} is outside SLURM_NTASKS={world}")
    if per_node_text:
        per_node = expand_tasks_per_node(per_node_text)
        if sum(per_node) != world:
            raise LaunchError(
                f"SLURM tasks per node {per_node_text!r} add up to {sum(per_node)}, "
                f"not SLURM_NTASKS={world}"
            )
        if nodes_text and len(per_node) != len(nodes):
            raise LaunchError(
                f"SLURM tasks per node {per_node_text!r} give {len(per_node)} nodes, the node "
                f"list {nodes_text!r} {len(nodes)}"
            )
        node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else None
        if node is not None and not (0 <= node < len(per_node) and local < per_node[node]):
            raise LaunchError(
                f"SLURM_LOCALID={local} on node {node} does not fit the tasks per node "
                f"{per_node_text!r}"
            )
        on_node = per_node[node] if node is not None else max(per_node)
    else:
        on_node = _int(env, "SLURM_NTASKS_PER_NODE") if "SLURM_NTASKS_PER_NODE" in env else 1
    addr = env.get("MASTER_ADDR") or nodes[0]
    return Launch(
        rank, world, local, addr, _port(env), launcher="slurm", local_world_size=max(1, on_node)
    )


def _srun_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of an ``srun`` step (numbered 0, 1, ...), not the batch
    script itself (no step, or SLURM's reserved ids for the batch and extern steps)."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    return step.isdigit() and int(step) < 0xFFFFFFF0 and "SLURM_PROCID" in env


def resolve_launch(env: Mapping[str, str]) -> Launch:
    """This process's rank, world size, local rank and rendezvous address, from torchrun's
    variables when present, else from ``srun``'s, else a single process. ``SWAV_LAUNCH``
    (torchrun, slurm or single) overrides the detection."""
    forced = env.get("SWAV_LAUNCH", "")
    if forced not in ("", "torchrun", "slurm", "single"):
        raise LaunchError(f"SWAV_LAUNCH={forced!r}: use torchrun, slurm or single")
    if forced == "single":
        return Launch()
    if forced == "slurm" or (not forced and "RANK" not in env and _srun_step(env)):
        missing = [v for v in ("SLURM_PROCID", "SLURM_NTASKS") if v not in env]
        if missing:
            raise LaunchError(f"a SLURM launch needs {', '.join(missing)} (run it with srun)")
        return _slurm(env)
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        if not 0 <= rank < world:
            raise LaunchError(f"RANK={rank} is outside WORLD_SIZE={world}")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        on_node = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        on_node = max(1, on_node)
        return Launch(
            rank, world, local, addr, _port(env), launcher="torchrun", local_world_size=on_node
        )
    if forced == "torchrun":
        raise LaunchError("SWAV_LAUNCH=torchrun but RANK / WORLD_SIZE are not set")
    return Launch()
