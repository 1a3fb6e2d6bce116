"""The ``swav`` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from swav.config import ConfigError, build_config, describe_options, presets


def _options_epilog() -> str:
    lines = ["configuration keys (set as key=value; defaults shown before any preset):"]
    for key, default, doc in describe_options():
        lines.append(f"  {key} = {default}")
        if doc:
            lines += textwrap.wrap(doc, 92, initial_indent="      ", subsequent_indent="      ")
    lines.append("")
    lines.append("presets: " + ", ".join(presets()))
    return "\n".join(lines)


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train SwAV on images (a folder, an archive, 'digits', cifar10 ...)",
        description="Pretrain a SwAV model. Settings come from the defaults, then --preset, "
        "then key=value overrides. Rerunning with the same run_dir resumes from its checkpoint.",
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="configuration overrides, e.g. data.source=~/photos train.epochs=100",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="a preset name (see `swav presets`) or a YAML file (default: 'demo' "
        "when no data is given, else none: the paper's main recipe)",
    )
    p.add_argument("--data", default=None, help="shorthand for data.source=DATA (default: none)")
    p.add_argument("--run-dir", default=None, help="shorthand for run_dir=DIR (default: none)")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run directory even if its checkpoint has other settings (default: refuse)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args) -> int:
    from swav.engine.train import pretrain

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    preset = args.preset
    if preset is None and not any(o.startswith("data.source=") for o in overrides):
        preset = "demo"  # nothing given: the offline recipe on the embedded digits
    cfg = build_config(preset, overrides)
    result = pretrain(
        cfg, allow_config_change=args.allow_config_change, progress=not args.no_progress
    )
    state = "stopped (resume by running the same command)" if result.interrupted else "finished"
    print(f"{state}: {result.epochs_done} epochs, last loss {result.last_loss:.4f}")
    if result.corrupt:
        print(f"skipped {len(result.corrupt)} unreadable images")
    print(
        f"run directory: {result.run_dir.resolve()} (checkpoint.pt, config.yaml, "
        "metrics.jsonl, loss.png)"
    )
    return 0


def _cmd_demo(args) -> int:
    from swav.demo import format_report, run_demo

    report = run_demo(args.run_dir, args.overrides, progress=not args.no_progress)
    print()
    print(
        f"SwAV on the embedded handwritten digits: {report['epochs']} epochs in "
        f"{report['train_seconds']:.0f} s, final loss {report['final_loss']:.3f}"
    )
    print(format_report(report))
    rd = Path(report["run_dir"])
    print(
        f"\noutputs in {rd}: loss.png (loss curve), metrics.jsonl, checkpoint.pt, demo_results.json"
    )
    return 0


def _cmd_presets(args) -> int:
    from swav.config import load_preset

    for name in presets():
        first = ""
        text = (Path(__file__).parent / "configs" / f"{name}.yaml").read_text().splitlines()
        if text and text[0].startswith("#"):
            first = text[0].lstrip("# ")
        load_preset(name)
        print(f"{name:28s} {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swav",
        description="SwAV self-supervised learning: pretrain, evaluate, export, embed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    d = sub.add_parser("demo", help="pretrain on the embedded digits and show what was learned")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo preset")
    d.add_argument("--run-dir", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    pr = sub.add_parser("presets", help="list the configuration presets")
    pr.set_defaults(func=_cmd_presets)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from swav.data.sources import DataError
    from swav.engine.checkpoint import UnsafeCheckpointError
    from swav.engine.metrics import NonFiniteLossError
    from swav.engine.train import ConfigMismatchError

    try:
        return args.func(args)
    except (
        ConfigError,
        DataError,
        ConfigMismatchError,
        UnsafeCheckpointError,
        NonFiniteLossError,
        FileNotFoundError,
    ) as e:
        print(f"swav {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "json"]
