"""Generated from the command line itself: every command x every option gets the values that its
declared kind does not allow, and must answer with exit code 2 and one line
``swav <command>: error: ...``, without a traceback and without changing any file that was
there before.

The bad values come from each option's kind (``swav.values`` / ``swav.cli.kinds``): numbers just
outside the range, nan, inf, huge, empty, text; a missing path, a folder where a file is read, a
file where a folder is read, a read-only location, an existing file, the run's own checkpoint.
A new option is covered by declaring its kind; an option without one fails
``test_every_option_declares_its_kind``, and a kind whose range lets a bad value through fails
``test_values_outside_each_kind_are_refused``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swav.cli import build_parser, main
from swav.cli.kinds import OutputFile, OutputFolder, OutputPath
from swav.values import InputFile, InputFolder, Override, Range, Reference, Split
from tests.conftest import tiny_overrides

TINY = [o for o in tiny_overrides("x") if not o.startswith(("run_dir=", "data.source="))]

# a valid invocation of every command; the option under test replaces its value or is added
BASE: dict[tuple[str, ...], list[str]] = {
    ("pretrain",): ["pretrain", "--data", "digits", "--run-dir", "{tmp}/r", "--no-progress", *TINY],
    ("demo",): ["demo", "--run-dir", "{tmp}/demo", "--no-progress", *TINY],
    ("presets",): ["presets"],
    ("shards",): ["shards", "{data}", "{tmp}/shards"],
    ("cache",): ["cache"],
    ("report",): ["report", "{run}", "--html", "--no-progress"],
    ("viz", "curves"): ["viz", "curves", "{run}", "--out", "{tmp}/c.png"],
    ("zoo",): ["zoo"],
    ("export",): ["export", "--checkpoint", "{run}", "--format", "safetensors", "--out", "{tmp}/x"],
    ("hub", "push"): ["hub", "push", "{run}", "--repo", "a/b", "--out", "{tmp}/h", "--dry-run"],
    ("embed",): ["embed", "{data}", "--checkpoint", "{run}", "--out", "{tmp}/e.npy"],
    ("predict",): ["predict", "{image}", "--checkpoint", "{run}", "--head", "{head}"],
    ("assign",): ["assign", "{image}", "--checkpoint", "{run}"],
}
for _p in ("knn", "linear", "semisup", "lowshot", "cluster"):
    BASE[("eval", _p)] = ["eval", _p, "--checkpoint", "{run}", "--data", "{data}", "--no-progress"]
for _v in ("clusters", "neighbours", "embedding"):
    BASE[("viz", _v)] = ["viz", _v, "--checkpoint", "{run}", "--data", "{data}", "--no-progress"]
BASE[("viz", "neighbours")] += ["{image}"]


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaves(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.dest != "command_parser"
    ]


FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


def is_flag(action: argparse.Action) -> bool:
    return isinstance(action, FLAGS)


def _numbers_outside(r: Range) -> list[str]:
    bad = ["nan", "inf", "-inf", "", "abc", "1e400"]
    if r.integer:
        bad += ["1.5", "9" * 30]
    if r.lo is not None:
        below = (r.lo - 1) if r.integer else (r.lo if r.lo_open else r.lo - 1e-3 - abs(r.lo))
        bad += [str(int(below)) if r.integer else repr(below), "-1"]
    if r.hi is not None:
        above = (r.hi + 1) if r.integer else (r.hi if r.hi_open else r.hi * 2 + 1)
        bad.append(str(int(above)) if r.integer else repr(above))
    return [b for b in dict.fromkeys(bad) if b == "" or not r.contains(_number(b))]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def bad_values(action: argparse.Action, has_force: bool) -> list[tuple[str, list[str]]]:
    """(value, extra arguments) outside the option's kind."""
    kind = action.type
    if action.choices is not None:
        return [("not-a-choice", [])]
    if isinstance(kind, Range):
        return [(v, []) for v in _numbers_outside(kind)]
    if isinstance(kind, OutputFile):
        end = kind.suffixes[0] if kind.suffixes else ".out"
        out = [("", []), ("{folder}", []), ("{run}/checkpoint.pt", []), ("{run}/config.yaml", [])]
        out += [("{existing}" + end, []), ("{readonly}/x" + end, [])]
        if kind.suffixes:
            out.append(("{folder}/out.wrong-suffix", []))
        if has_force:  # --force replaces an output, never a run's own file
            out += [("{run}/checkpoint.pt", ["--force"]), ("{run}/metrics.jsonl", ["--force"])]
        return out
    if isinstance(kind, OutputFolder):
        return [("", []), ("{existing}", []), ("{readonly}/sub", [])]
    if isinstance(kind, OutputPath):  # a file or a folder, as the command's format wants
        out = [("", []), ("{run}/checkpoint.pt", []), ("{existing}", []), ("{readonly}/x", [])]
        if has_force:
            out.append(("{run}/checkpoint.pt", ["--force"]))
        return out
    if isinstance(kind, InputFile):
        return [("", []), ("{missing}", []), ("{folder}", [])]
    if isinstance(kind, InputFolder):
        return [("", []), ("{missing}", []), ("{existing}", [])]
    if isinstance(kind, Reference):
        return [("", []), ("{missing}", []), ("{folder}", []), ("{garbage}", [])]
    if isinstance(kind, Split):
        return [("no-such-split", [])]
    if isinstance(kind, Override):
        bad = ["train.epochs=-1", "train.epochs=nan", "no.such=1", "train.batch_size=0", "x"]
        return [(v, []) for v in bad]
    raise AssertionError(f"{action.option_strings or action.dest}: no declared kind ({kind})")


def _argv(path: tuple[str, ...], parser, action, value: str, extra: list[str]) -> list[str]:
    base = list(BASE[path])
    if action.option_strings:
        flag = action.option_strings[-1]
        if flag in base:
            i = base.index(flag)
            base[i + 1] = value
        else:
            base += [flag, value]
        return base + extra
    positionals = [a for a in options(parser) if not a.option_strings]
    slot = positionals.index(action)
    fixed = [t for t in base[len(path) :] if not t.startswith("-")]
    if isinstance(action.type, Override):  # key=value settings: the bad one added to the others
        return base + [value] + extra
    # the positionals of the base are its first non-option tokens after the command
    i = base.index(fixed[slot], len(path))
    base[i] = value
    return base + extra


@functools.cache
def command_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    return dict(leaves(build_parser("*")))


def cases():
    parser = build_parser("*")
    out = []
    for path, leaf in leaves(parser):
        has_force = any("--force" in a.option_strings for a in options(leaf))
        for action in options(leaf):
            if is_flag(action) or path not in BASE:
                continue
            for value, extra in bad_values(action, has_force):
                name = action.option_strings[-1] if action.option_strings else action.dest
                shown = value or "''"
                out.append(
                    pytest.param(path, name, value, extra, id=f"{' '.join(path)} {name} {shown}")
                )
    return out


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A finished tiny run, labelled images, and the files and folders the bad values name."""
    from swav.config import build_config
    from swav.engine.train import pretrain

    d = tmp_path_factory.mktemp("bad_input")
    result = pretrain(
        build_config(None, tiny_overrides(d / "run", **{"train.epochs": 1})), progress=False
    )
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (d / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / "data" / split / c / f"{i}.png")
    width = int(result.model.num_features)
    torch.save({"weight": torch.randn(2, width), "bias": torch.zeros(2)}, d / "head.pt")
    (d / "folder").mkdir()
    (d / "existing").write_text("an existing file\n")
    for _path, leaf in leaves(build_parser("*")):
        for action in options(leaf):
            if isinstance(action.type, OutputFile):
                for end in (*action.type.suffixes, ".out"):
                    (d / f"existing{end}").write_text("an existing file\n")
    (d / "garbage.pt").write_text("not a checkpoint at all")
    readonly = Path("/proc/sys") if os.geteuid() == 0 else d / "readonly"
    if os.geteuid() != 0:
        readonly.mkdir()
        readonly.chmod(0o555)
    names = {
        "run": d / "run",
        "data": d / "data",
        "image": d / "data" / "val" / "a" / "0.png",
        "head": d / "head.pt",
        "folder": d / "folder",
        "existing": d / "existing",
        "garbage": d / "garbage.pt",
        "missing": d / "no" / "such" / "thing",
        "readonly": readonly,
    }
    return d, {k: str(v) for k, v in names.items()}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_command_has_a_base_invocation():
    missing = [p for p, _ in leaves(build_parser("*")) if p not in BASE]
    assert not missing, f"commands without an invocation in BASE: {missing}"


def test_every_option_declares_its_kind():
    undeclared = []
    for path, leaf in leaves(build_parser("*")):
        for action in options(leaf):
            if is_flag(action) or action.choices is not None:
                continue
            kinds = (Range, OutputFile, OutputFolder, OutputPath, InputFile, InputFolder)
            kinds += (Reference, Split)
            if not isinstance(action.type, (*kinds, Override)):
                undeclared.append(f"{' '.join(path)} {action.option_strings or action.dest}")
    assert not undeclared, f"options without a declared kind: {undeclared}"


@pytest.mark.parametrize("path,name,value,extra", cases())
def test_values_outside_each_kind_are_refused(fx, tmp_path, capsys, path, name, value, extra):
    root, names = fx
    before = snapshot(root)
    leaf = command_parsers()[path]
    action = next(
        a
        for a in options(leaf)
        if name in a.option_strings or (a.dest == name and not a.option_strings)
    )
    argv = _argv(path, leaf, action, value, extra)
    argv = [a.format(tmp=tmp_path, **names) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("INFO ", "WARNING ", "DEBUG "))
    ]
    assert code == 2, f"{argv} was accepted (exit {code}): {err[-600:]}"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"swav {path[0]}: error:"), lines
    after = snapshot(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"{argv} changed files that were there before: {changed}"
