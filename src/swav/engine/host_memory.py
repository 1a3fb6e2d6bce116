"""Freed host memory kept for the next training step instead of handed back to the kernel.

A training step on the CPU allocates and frees the same activations and gradients every
iteration, most of them larger than glibc's threshold for serving an allocation by ``mmap``
(at most 32 MB). Each such tensor is then unmapped when freed and mapped afresh at the next
step, and every 4 KB page of it is faulted in and zeroed by the kernel again: for ResNet-50
(2 x 224 + 6 x 96, batch 32) about 0.9 million page faults and 3 s of system time a step,
close to half the step on a 2-core CPU (``benchmarks/perf.py``). Served from the heap and not
trimmed, the same memory is reused from one step to the next.

Only glibc's allocator is changed (``mallopt``); elsewhere this does nothing. The settings are
process-wide and restored, with the kept memory given back (``malloc_trim``), when training
ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

# mallopt parameters and glibc's defaults for them (malloc.h, mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEPT = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
"""No allocation served by ``mmap``, and the top of the heap never trimmed while training."""


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
    except OSError:
        return None
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in needed) else None


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> bool:
    return all(libc.mallopt(param, value) == 1 for param, value in values.items())


def keep_freed_memory() -> bool:
    """Keep freed memory in the process for reuse (glibc only). True when it is now kept."""
    libc = _glibc()
    if libc is None:
        return False
    if not _set(libc, KEPT):
        _set(libc, DEFAULTS)
        return False
    return True


def release_freed_memory() -> None:
    """glibc's defaults again, and the freed memory kept so far given back to the kernel."""
    libc = _glibc()
    if libc is not None:
        _set(libc, DEFAULTS)
        libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """``keep_freed_memory`` for the block, then ``release_freed_memory``; yields whether the
    memory is kept (False when not enabled or not on glibc)."""
    kept = enabled and keep_freed_memory()
    if kept:
        log.debug("freed memory kept for the next step (glibc: no mmap, no trimming)")
    try:
        yield kept
    finally:
        if kept:
            release_freed_memory()
