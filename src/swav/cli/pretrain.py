"""``swav pretrain``, ``swav demo`` and ``swav presets``."""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Any

from swav.cli.common import progress_options
from swav.cli.kinds import OutputFolder
from swav.config import (
    build_config,
    check_overrides,
    describe_options,
    preset_summary,
    presets,
)
from swav.data.settings import missing_path
from swav.engine.launch import resolve_launch
from swav.engine.run_dir import RunDir
from swav.errors import UsageError
from swav.values import COUNT, SEED, Override, Reference, Split


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train SwAV on images (a folder, an archive, 'digits', cifar10 ...)",
        description="Pretrain a SwAV model. Settings come from the defaults, then --preset, "
        "then key=value overrides. Rerunning with the same run_dir resumes from its checkpoint.",
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[progress_options()],
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        type=Override(),
        help="configuration overrides, e.g. data.source=~/photos train.epochs=100",
    )
    p.add_argument(
        "--preset",
        default=None,
        type=Reference("preset"),
        help="a preset name (see `swav presets`), a YAML file, or 'defaults' for the built-in "
        "defaults (the paper's main recipe) (default: 'demo' when no data is given, else a "
        "recipe chosen from the data and this machine, printed at the start)",
    )
    p.add_argument(
        "--data",
        default=None,
        type=Reference("data"),
        help="shorthand for data.source=DATA (default: none)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        type=OutputFolder("run directory"),
        help="shorthand for run_dir=DIR (default: none)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run directory even if its checkpoint has other settings (default: refuse)",
    )
    p.set_defaults(func=_pretrain)
    d = sub.add_parser(
        "demo",
        help="pretrain on the embedded digits and show what was learned",
        parents=[progress_options()],
    )
    d.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        type=Override(),
        help="overrides of the demo preset",
    )
    d.add_argument(
        "--run-dir",
        default="runs/demo",
        type=OutputFolder("run directory"),
        help="output folder (default: runs/demo)",
    )
    d.set_defaults(func=_demo)
    pr = sub.add_parser("presets", help="list the configuration presets")
    pr.set_defaults(func=_presets)
    _register_shards(sub)


def _register_shards(sub: Any) -> None:
    sh = sub.add_parser(
        "shards",
        help="pack images into tar shards with an index (fast start at any scale)",
        description="Pack a folder, an archive or a dataset into uncompressed tar shards "
        "(WebDataset layout) with an index of every image's offset; train on them with "
        "data.source=OUT.",
    )
    sh.add_argument("source", type=Reference("data"), help="folder, archive or dataset name")
    sh.add_argument(
        "out",
        type=OutputFolder("shards folder"),
        help="folder to write the shards and index.json into",
    )
    sh.add_argument(
        "--split", default="", type=Split(), help="split of the source (default: every image)"
    )
    sh.add_argument("--shard-size", type=COUNT, default=10_000, help="images per shard (10000)")
    sh.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="the random order the images are packed in (default: 0); a stream reads shard "
        "after shard, so packing in listing order (by class) would give batches of few classes",
    )
    sh.add_argument(
        "--keep-order", action="store_true", help="pack in the listing's order (not shuffled)"
    )
    sh.set_defaults(func=_shards)


def _options_epilog() -> str:
    lines = ["configuration keys (set as key=value; defaults shown before any preset):"]
    for key, default, doc in describe_options():
        lines.append(f"  {key} = {default}")
        if doc:
            lines += textwrap.wrap(doc, 92, initial_indent="      ", subsequent_indent="      ")
    lines.append("")
    lines.append("presets: " + ", ".join(presets()))
    return "\n".join(lines)


def _pretrain(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    check_overrides(overrides, args.preset)  # each value refused before any heavy import
    given = {o.split("=", 1)[0].strip(): o.split("=", 1)[1] for o in overrides if "=" in o}
    for flag, key, value in (
        ("--data", "data.source", args.data),
        ("--run-dir", "run_dir", args.run_dir),
    ):
        if value and key in given and given[key] != value:
            raise UsageError(
                f"{flag} {value} and {key}={given[key]} name two different values: give one"
            )
        if value:
            overrides.append(f"{key}={value}")
            given[key] = value
    preset: str | dict[str, Any] | None = args.preset
    run_settings = _settings_of(RunDir.of(given["run_dir"])) if "run_dir" in given else None
    if preset is None and "data.source" not in given and run_settings is not None:
        preset = run_settings  # an existing run: its own settings, then the overrides
        print(f"settings from {given['run_dir']} (change any value with key=value)")
    elif preset is None and "data.source" not in given:
        preset = "demo"  # nothing given: the offline recipe on the embedded digits
    elif preset is None:  # data but no preset: settings chosen from the data and the machine
        missing = missing_path(given["data.source"])
        if missing:
            raise UsageError(
                f"data path {missing} does not exist: give a folder of images or an archive"
            )
        from swav.engine.recipe import suggest_recipe

        recipe = suggest_recipe(
            given["data.source"],
            given.get("data.split") or None,
            root=given.get("data.root", "~/.cache/swav/datasets"),
            download=given.get("data.download", "").lower() in ("true", "1", "yes"),
            budget=given.get("train.time_budget", "0" if "train.epochs" in given else None),
            arch=given.get("model.arch") or _arch_of_init(given.get("model.init")),
        )
        chosen = {k: v for k, v in given.items() if k not in ("data.source", "run_dir")}
        if resolve_launch(os.environ).rank == 0:
            print(f"recipe for {given['data.source']} (change any value with key=value):")
            print("\n".join("  " + line for line in recipe.describe(chosen)))
        if "train.epochs" in given and "train.time_budget" not in given:
            overrides.append("train.time_budget=0")  # a fixed length asked for: no budget
        overrides = recipe.overrides() + overrides
    cfg = build_config(None if preset == "defaults" else preset, overrides)
    from swav import pretrain

    result = pretrain(
        cfg, allow_config_change=args.allow_config_change, progress=not args.no_progress
    )
    if result.already_finished:
        print(
            f"{result.run_dir.resolve()} has already finished its {result.epochs_done} epochs; "
            "nothing changed (raise train.epochs to train longer, or choose another --run-dir)"
        )
        return 0
    state = "stopped (resume by running the same command)" if result.interrupted else "finished"
    health = "healthy" if result.healthy else "COLLAPSED (see the warnings above)"
    recovered = f", recovered from collapse {len(result.recoveries)}x" if result.recoveries else ""
    print(
        f"{state}: {result.epochs_done} epochs, loss {result.last_loss:.4f} (mean of the last "
        "epoch); "
        f"model {health}{recovered}"
    )
    if result.corrupt:
        print(f"skipped {len(result.corrupt)} unreadable images")
    files = RunDir.of(result.run_dir).outputs()
    print(f"run directory: {result.run_dir.resolve()} ({', '.join(files)})")
    # stopped by a signal: not a success, so that schedulers and torchrun see it (128 + signal)
    return 128 + result.stop_signal if result.stop_signal else 0


def _settings_of(run: RunDir) -> dict[str, Any] | None:
    """The settings of an existing run directory (None for a new one); its checkpoint is
    read (torch imported) only when its ``config.yaml`` is lost."""
    saved = run.read_config()
    if saved is not None or not run.checkpoint.is_file():
        return saved
    from swav.engine.state import settings_of_run

    return settings_of_run(run)


def _arch_of_init(init: str | None) -> str | None:
    """The architecture of the weights ``model.init`` names (a warm start keeps it)."""
    if not init:
        return None
    from swav.interop.checkpoints import load_checkpoint

    return load_checkpoint(init, ignore=("prototypes", "fc")).arch


def _demo(args: argparse.Namespace) -> int:
    from swav.demo import run_demo
    from swav.report import format_demo_report

    report = run_demo(args.run_dir, args.overrides, progress=not args.no_progress)
    print()
    if report.get("already_finished"):
        print(f"{report['run_dir']} holds a finished demo; nothing changed. Its results:")
    print(
        f"SwAV on the embedded handwritten digits: {report['epochs']} epochs in "
        f"{report['train_seconds']:.0f} s, final loss {report['final_loss']:.3f}"
    )
    print(format_demo_report(report))
    page = RunDir.of(report["run_dir"]).path / "report.html"
    if not (report.get("already_finished") and page.exists()):  # a finished demo is not redone
        from swav.viz.html import write_html_report

        page = write_html_report(report["run_dir"], progress=False)
    print(
        f"\noutputs in {report['run_dir']}: loss.png (loss curve), metrics.jsonl, "
        "checkpoint.pt, demo_results.json"
    )
    print(f"the report, with curves, prototype galleries and a map of the features: {page}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    for name in presets():
        print(f"{name:28s} {preset_summary(name)}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from swav.data.shards import pack_shards
    from swav.data.sources import open_source

    source = open_source(args.source, args.split, strict=True)
    seed = None if args.keep_order else args.seed
    index = pack_shards(source, args.out, args.shard_size, seed)
    shards = -(-len(source) // args.shard_size)
    order = "in listing order" if seed is None else f"shuffled with seed {seed}"
    print(f"{len(source)} images in {shards} shards, {order}; index {index}")
    print(f"train on them with data.source={args.out}")
    return 0
