"""Options shared by several commands, declared once and reused through ``parents=``, and the
options of a settings dataclass (an evaluation protocol's) generated from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from swav.cli.kinds import OutputFile, OutputFolder
from swav.values import BATCH, IGNORABLE_PARTS, IMAGE_SIZE, LIMIT, SEED, Reference, Split


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def checkpoint_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Reference("checkpoint"),
        help="a run directory, a checkpoint file (any known layout) or a released name",
    )
    p.add_argument(
        "--ignore",
        nargs="*",
        default=[],
        choices=IGNORABLE_PARTS,
        help="checkpoint parts allowed to be missing or left out (default: none)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch a released checkpoint (--checkpoint NAME, see `swav zoo`) into the cache "
        "when it is not there (default: use the cache only)",
    )
    return p


def size_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument(
        "--size",
        type=IMAGE_SIZE,
        default=None,
        help="image size (default: the run's large crop size, else 224)",
    )
    return p


def batch_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--batch-size", type=BATCH, default=256, help="batch size (default: 256)")
    return p


def progress_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def labelled_data_options() -> argparse.ArgumentParser:
    """The labelled data of an evaluation, and where its result goes."""
    p = _parent()
    p.add_argument(
        "--data",
        default=None,
        type=Reference("data"),
        help="labelled folder / archive / dataset (default: the pretraining data)",
    )
    p.add_argument(
        "--train-split", default=None, type=Split(), help="training split (default: the run's)"
    )
    p.add_argument(
        "--test-split",
        default=None,
        type=Split(),
        help="test split (default: the run's eval split)",
    )
    p.add_argument(
        "--limit", type=LIMIT, default=0, help="use N images of each split (default: 0, all)"
    )
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--download-data",
        action="store_true",
        help="let a torchvision dataset (cifar10, cifar100, stl10) download (default: no)",
    )
    p.add_argument(
        "--cache",
        default=None,
        type=OutputFolder("feature cache folder"),
        help="feature cache folder (default: none)",
    )
    p.add_argument(
        "--out",
        default=None,
        type=OutputFile("result file"),
        help="result JSON (default: RUN_DIR/eval/<protocol>.json for a run directory, "
        "else eval_results/<protocol>.json, replaced by each new evaluation)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    return p


def add_settings_arguments(parser: argparse.ArgumentParser, settings: type) -> None:
    """One ``--name`` option per field of a settings dataclass, with its default, help and
    kind (the field's ``metadata["kind"]``: its range, or the kind of path it is)."""
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = f.metadata.get("help", f.name)
        kind = f.metadata.get("kind")
        if default is not None and "default:" not in text:
            text += f" (default: {_shown(default)})"
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=text)
        elif typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp)
            parser.add_argument(
                flag, dest=f.name, type=kind or inner, nargs="+", default=default, help=text
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=kind or _scalar(tp), default=default, help=text
            )


def settings_from_args(settings: type, args: argparse.Namespace) -> Any:
    return settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings)})


def _scalar(tp: Any) -> Any:
    """The type of a scalar field (the non-None member of an optional)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _shown(default: Any) -> str:
    if isinstance(default, list):
        return " ".join(str(v) for v in default)
    return str(default)
