"""What each command-line value is, declared once per option as its argparse ``type``.

Every option of every command has a kind: a number with its range (``swav.values.Range``), a
choice, a flag, or one of the kinds here (a file to read, a name the command resolves, a file
or folder to write). A value outside its kind is refused while the arguments are parsed, as one
line, before anything is loaded or written; what can only be checked against the data (a split
that does not exist, a checkpoint that does not load) is refused by the command before any work
is written. ``tests/test_bad_input.py`` reads these kinds from the parser and tries the values
outside each one on every option, so a new option is covered by declaring its kind.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from swav.engine.run_dir import guard_output
from swav.values import Kind


@dataclass(frozen=True)
class OutputFile(Kind):
    """A file to write. Refused here: a folder, a run directory's own files, a location that
    cannot be written; once parsed, an existing file unless the command's ``--force`` is given
    (``check_outputs``)."""

    what: str = "output file"
    suffixes: tuple[str, ...] = ()
    """The endings the file may have (empty: any)."""

    def convert(self, text: str) -> str:
        if self.suffixes and not text.lower().endswith(self.suffixes):
            raise argparse.ArgumentTypeError(
                f"{self.what} {text}: name it with one of {', '.join(self.suffixes)}"
            )
        guard_output(text, force=True, what=self.what)
        return text


@dataclass(frozen=True)
class OutputFolder(Kind):
    """A folder to write into (created when missing). Refused: a file, a location that cannot
    be written."""

    what: str = "output folder"

    def convert(self, text: str) -> str:
        guard_output(text, folder=True, what=self.what)
        return text


@dataclass(frozen=True)
class OutputPath(Kind):
    """A file or a folder to write, as another option decides (``swav export``: a folder for
    ``--format timm``, a file otherwise). Refused here: a run directory's own files, a location
    that cannot be written; the command checks the rest before any work."""

    what: str = "output"

    def convert(self, text: str) -> str:
        guard_output(text, force=True, folder=Path(text).is_dir(), what=self.what)
        return text


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """After parsing: every output file given must not exist unless ``--force`` is given."""
    force = bool(getattr(args, "force", False))
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action.type, OutputFile) and value is not None:
            guard_output(value, force=force, what=action.type.what)


__all__ = [
    "OutputFile",
    "OutputFolder",
    "OutputPath",
    "check_outputs",
]  # and the kinds of swav.values
