"""``swav eval <protocol>`` (one sub-command per registered protocol) and ``swav report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swav.cli.common import (
    add_settings_arguments,
    batch_options,
    checkpoint_options,
    labelled_data_options,
    progress_options,
    settings_from_args,
    size_options,
)
from swav.engine.run_dir import RunDir
from swav.eval.protocols import PROTOCOLS, evaluate, format_result
from swav.values import COUNT, InputFolder, Reference


def register(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="evaluate a backbone: " + ", ".join(PROTOCOLS), description=__doc__
    )
    es = e.add_subparsers(dest="protocol", required=True)
    parents = [
        checkpoint_options(),
        labelled_data_options(),
        size_options(),
        batch_options(),
        progress_options(),
    ]
    for name, protocol in PROTOCOLS.items():
        p = es.add_parser(name, help=protocol.help, description=protocol.help, parents=parents)
        add_settings_arguments(p, protocol.settings)
        p.set_defaults(func=_eval)
    r = sub.add_parser(
        "report",
        help="a run's results in one page: REPORT.md, or report.html with --html",
        parents=[progress_options()],
    )
    r.add_argument("run_dir", type=InputFolder("run directory"))
    r.add_argument(
        "--html",
        action="store_true",
        help="write RUN_DIR/report.html: configuration, curves, evaluations, galleries, "
        "embedding map and health warnings, in one self-contained page",
    )
    r.add_argument(
        "--data",
        default=None,
        type=Reference("data"),
        help="images for the galleries (default: the run's)",
    )
    r.add_argument("--limit", type=COUNT, default=1000, help="images in the galleries (1000)")
    r.add_argument("--no-pictures", action="store_true", help="leave out galleries and map")
    r.set_defaults(func=_report)


def _eval(args: argparse.Namespace) -> int:
    from swav.eval.request import default_result_path, resolve_request

    out = args.out or default_result_path(args.checkpoint, args.protocol)
    request = resolve_request(
        args.checkpoint,
        data=args.data,
        train_split=args.train_split,
        test_split=args.test_split,
        size=args.size,
        limit=args.limit,
        seed=args.seed,
        ignore=args.ignore,
        download=args.download,
        download_data=args.download_data,
        out=out,
        cache_dir=args.cache,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    settings = settings_from_args(PROTOCOLS[args.protocol].settings, args)
    record = evaluate(request, args.protocol, settings)
    print(format_result(record))
    print(f"result written to {out}")
    if Path(args.checkpoint).is_dir() and RunDir.of(args.checkpoint).config.is_file():
        from swav.engine.trackers import log_evaluation

        sent = log_evaluation(RunDir.of(args.checkpoint), record)
        if sent:
            print(f"sent to the run's {', '.join(sent)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from swav.report import write_report

    if args.html:
        from swav.viz.html import write_html_report

        page = write_html_report(
            args.run_dir,
            data=args.data,
            limit=args.limit,
            pictures=not args.no_pictures,
            progress=not args.no_progress,
        )
        print(f"written to {page.resolve()} (open it in a browser)")
        return 0
    path = write_report(args.run_dir)
    print(f"{path.read_text()}\nwritten to {path}")
    return 0
