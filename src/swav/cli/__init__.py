"""The ``swav`` command. Thin: it parses arguments and calls the library.

Each command group registers its sub-commands (``pretrain``: pretrain, demo, presets;
``evaluate``: eval, report; ``interop``: zoo, export, embed, predict, assign). A user error
(``SwAVError``) is caught once, here: ``swav <command>: error: <message>`` and exit code 2;
``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from swav.cli import evaluate, interop, pretrain
from swav.errors import SwAVError

COMMAND_GROUPS = (pretrain.register, evaluate.register, interop.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swav",
        description="SwAV self-supervised learning: pretrain, evaluate, export, embed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (default: one line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SwAVError as e:
        if args.debug:
            raise
        print(f"swav {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser"]
