"""Run checkpoints: written atomically, loaded safely.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
over ``checkpoint.pt`` (rename is atomic on POSIX), and the folder is fsynced: a crash at any
moment leaves either the previous complete checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from swav.errors import SwAVError


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that leaves either the old file or the complete new one (see above)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file through ``write(f)`` into a temporary file beside ``path``, fsync it and
    rename it over ``path``: a full disk, a read-only location or a kill at any moment leaves
    the old file (or none) and no partial one. Errors of the file system reach the caller as
    ``OSError`` with their errno (ENOSPC, EROFS ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def keep_copy(path: str | Path, copy: str | Path) -> None:
    """A periodic copy of a complete checkpoint (hard link when possible)."""
    copy = Path(copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(copy.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, copy)


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, containers and plain values only.

    A file that needs arbitrary pickled code is refused with an explanation
    (``UnsafeCheckpointError``); an empty, truncated or foreign file is called damaged
    (``DamagedCheckpointError``), since no loading option would help.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DamagedCheckpointError(f"{path} is empty (0 bytes): re-download or re-export it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError and friends
        reason = _load_failure(e)
        if "global" not in reason.lower():  # not a class the file wants to build: damage
            raise DamagedCheckpointError(
                f"{path} is damaged or not a PyTorch checkpoint ({reason}); "
                "re-download or re-export it"
            ) from e
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it holds pickled Python objects beyond tensors "
            "and plain containers. Loading it would run code from the file. If you "
            'trust its origin, convert it once with: python -c "import torch; '
            "obj = torch.load('IN', weights_only=False); "
            "torch.save(obj.get('state_dict', obj) if isinstance(obj, dict) else obj.state_dict(), "
            "'OUT')\" and load OUT instead."
        ) from e


def _load_failure(e: Exception) -> str:
    """The informative part of a ``torch.load`` failure, on one line."""
    msg = " ".join(str(e).split())
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    msg = msg.strip().split(". ")[0][:200]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class DamagedCheckpointError(SwAVError, ValueError):
    """The file is empty, truncated or not a PyTorch checkpoint at all."""


class UnsafeCheckpointError(SwAVError, RuntimeError):
    """The file would need arbitrary code to unpickle."""
