"""The ``swav`` command. Thin: it parses arguments and calls the library.

Each command group registers its sub-commands (``pretrain``: pretrain, demo, presets;
``cache``; ``evaluate``: eval, report; ``interop``: zoo, export, embed, predict, assign). A
user error (``SwAVError``) is caught once, here: ``swav <command>: error: <message>`` and exit
code 2; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from swav.errors import SwAVError

# command -> (module of its group, one-line help). The top-level ``swav --help`` is built from
# this table alone, so it answers without importing torch; a command's group (and the library
# behind it) is imported only when that command is used. tests/test_cli_errors.py checks that
# each line here matches the help the group registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain", "train SwAV on images (a folder, an archive, 'digits', cifar10 ...)"),
    "demo": ("pretrain", "pretrain on the embedded digits and show what was learned"),
    "presets": ("pretrain", "list the configuration presets"),
    "shards": ("pretrain", "pack images into tar shards with an index (fast start at any scale)"),
    "cache": (
        "cache",
        "what the listing cache holds (decompressed archives too); --prune, --clear",
    ),
    "eval": ("evaluate", "evaluate a backbone: knn, linear, semisup, lowshot, cluster"),
    "report": ("evaluate", "a run's results in one page: REPORT.md, or report.html with --html"),
    "viz": ("viz", "pictures of a run or a model: curves, clusters, neighbours, embedding"),
    "zoo": ("interop", "list the released checkpoints loadable by name"),
    "export": ("interop", "export a backbone (torchvision, timm, safetensors, detectron2, swav)"),
    "embed": ("interop", "backbone features of every image, in order"),
    "predict": ("interop", "class and score per image (backbone + linear head)"),
    "assign": ("interop", "highest-scoring prototype per image"),
}


def _requested_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``swav`` parser. ``command="*"`` registers every command in full; a command name
    registers its group in full and lists the others by name; ``None`` lists all by name."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="swav",
        description="SwAV self-supervised learning: pretrain, evaluate, export, embed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (default: one line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {g for c, (g, _) in COMMANDS.items() if command in ("*", c)}
    registered: set[str] = set()
    for name, (group, help_text) in COMMANDS.items():
        if group in groups and group not in registered:
            importlib.import_module(f"swav.cli.{group}").register(sub)
            registered.add(group)
        elif group not in groups:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _requested_command(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (``--data X train.epochs=5 --run-dir R``),
    # which argparse alone splits into two positional groups
    if extra and hasattr(args, "overrides") and all("=" in a and a[0] != "-" for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader went away (``swav presets | head``): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return 0
    except SwAVError as e:
        if args.debug:
            raise
        print(f"swav {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def one_line(message: str) -> str:
    """``message`` as one line of plain text: terminal escape sequences removed, line breaks
    joined, other control characters shown escaped (a file name may hold any of them)."""
    text = _ANSI.sub("", message)
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["main", "build_parser"]
