"""The ``swav`` command. Thin: it parses arguments and calls the library.

Each command group registers its sub-commands (``pretrain``: pretrain, demo, presets;
``cache``; ``evaluate``: eval, report; ``interop``: zoo, export, hub, embed, predict, assign). A
user error (``SwAVError``) is caught once, here: ``swav <command>: error: <message>`` and exit
code 2; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from typing import NoReturn

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
    "export": (
        "interop",
        "export a backbone (torchvision, timm, safetensors, detectron2, onnx, swav)",
    ),
    "hub": ("interop", "Hugging Face Hub: push a model (weights, config.json, model card)"),
    "embed": ("interop", "backbone features of every image, in order"),
    "predict": ("interop", "class and score per image (backbone + linear head)"),
    "assign": ("interop", "highest-scoring prototype per image"),
}


def _requested_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


class Parser(argparse.ArgumentParser):
    """argparse with the command line's error format: one line ``swav <command>: error: ...``
    and exit code 2 (argparse's usage block is left to ``--help``)."""

    def error(self, message: str) -> NoReturn:
        words = self.prog.split()[1:]  # ["eval", "knn"] for ``swav eval knn``
        where = f"swav {words[0]}" if words else "swav"
        usage = " ".join(["swav", *words, "--help"])
        print(f"{where}: error: {one_line(message)} (see {usage})", file=sys.stderr)
        sys.exit(2)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``swav`` parser. ``command="*"`` registers every command in full; a command name
    registers its group in full and lists the others by name; ``None`` lists all by name."""
    import importlib

    parser = Parser(
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
    for leaf in _leaves(parser):  # each command knows its own parser (``check_outputs``)
        leaf.set_defaults(command_parser=leaf)
    return parser


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the commands themselves (``swav eval knn``, not ``swav eval``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for s in subs for p in dict.fromkeys(s.choices.values()) for leaf in _leaves(p)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or an argument refused (its one line is printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
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
    except OSError as e:
        if args.debug or e.errno not in _USER_OS_ERRORS:
            raise
        print(f"swav {args.command}: error: {one_line(os_error_message(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"swav {args.command}: interrupted; files are written whole or not at all, so what "
            "was saved before is intact",
            file=sys.stderr,
        )
        return 130


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line (``SystemExit`` after printing one line when it is refused)."""
    command = _requested_command(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (``--data X train.epochs=5 --run-dir R``),
    # which argparse alone splits into two positional groups
    if extra and hasattr(args, "overrides") and all("=" in a and a[0] != "-" for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        leaf = getattr(args, "command_parser", None) or parser
        leaf.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command_parser", None) is not None:  # outputs that exist: --force
        from swav.cli.kinds import check_outputs

        try:
            check_outputs(args.command_parser, args)
        except SwAVError as e:
            if args.debug:
                raise
            print(f"swav {args.command}: error: {one_line(str(e))}", file=sys.stderr)
            raise SystemExit(2) from None
    return args


_USER_OS_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EFBIG,
}
"""Errors of the file system that come from where the user asked to read or write (a full
disk, a read-only location, a path through a file), not from a defect."""


def os_error_message(e: OSError) -> str:
    """What the user reads for a file-system error: the path, the reason, what to do."""
    where = f" {e.filename}" if e.filename else ""
    advice = {
        errno.ENOSPC: "free some space or write somewhere else",
        errno.EDQUOT: "free some space or write somewhere else",
        errno.EROFS: "the location is read-only; write somewhere else",
        errno.EACCES: "you may not write there; choose a folder you can write to",
        errno.EPERM: "you may not write there; choose a folder you can write to",
        errno.EFBIG: "the file is larger than the file system allows",
    }.get(e.errno or 0, "check the path")
    return f"could not use{where}: {e.strerror or e}; {advice}"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def one_line(message: str) -> str:
    """``message`` as one line of plain text: terminal escape sequences removed, line breaks
    joined, other control characters shown escaped (a file name may hold any of them)."""
    text = _ANSI.sub("", message)
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["main", "build_parser", "parse_args", "Parser"]
