"""``swav cache``: what the listing cache holds, and removing what is stale."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from swav.data.listing import (
    CACHE_ENV,
    cache_entries,
    cache_root,
    clear_cache,
    remove_cache_entries,
    size_text,
    tree_size,
)
from swav.interop.zoo import cache_dir as hub_dir

DATASETS = "~/.cache/swav/datasets"
"""The default of ``data.root`` (``swav.config`` imports torch, which this command needs not)."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="what the listing cache holds (decompressed archives too); --prune, --clear",
        description="The listings of folders and archives, and the decompressed copies of "
        f".tar.gz archives, kept in ${CACHE_ENV} (default ~/.cache/swav): each with its source, "
        "its size and whether it is stale (its source is gone or has changed). Downloaded "
        "datasets and released checkpoints are shown, never removed.",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--prune",
        action="store_true",
        help="remove the stale entries (a run still training on an archive as it was before it "
        "changed reads the old copy: prune after it ends)",
    )
    what.add_argument(
        "--clear",
        action="store_true",
        help="remove everything in the listing cache (it is made again on the next open)",
    )
    p.set_defaults(func=_cache)


def _cache(args: Any) -> int:
    root = cache_root()
    if root is None:
        print(f"the listing cache is off ({CACHE_ENV}={os.environ.get(CACHE_ENV, '')})")
        return 0
    if args.clear:
        print(f"removed everything in {root}: {size_text(clear_cache(root))} freed")
        return 0
    entries = cache_entries(root)
    stale = [e for e in entries if e.stale]
    if args.prune:
        freed = remove_cache_entries(stale)
        for e in stale:
            print(f"removed {e.path.name} ({e.kind}, {size_text(e.size)}): {e.stale}")
        print(
            f"{len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'} removed, "
            f"{size_text(freed)} freed; {len(entries) - len(stale)} current kept"
        )
        return 0
    print(f"listing cache: {root}")
    for e in entries:
        source = (e.source or "source not recorded") + (f" [{e.split}]" if e.split else "")
        state = f"stale: {e.stale}" if e.stale else "current"
        print(f"  {size_text(e.size):>9}  {e.kind:<20}  {source}  ({state})")
    total = sum(e.size for e in entries)
    line = f"{len(entries)} entries, {size_text(total)}"
    if stale:
        line += (
            f"; {len(stale)} stale ({size_text(sum(e.size for e in stale))}): "
            "`swav cache --prune` removes them"
        )
    print(line)
    datasets = Path(DATASETS).expanduser()
    for name, folder in (("released checkpoints", hub_dir()), ("downloaded datasets", datasets)):
        if folder.is_dir():
            print(f"{name}: {folder}, {size_text(tree_size(folder))} (kept: remove by hand)")
    return 0
