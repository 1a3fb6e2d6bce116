"""The ``swav`` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
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


def _common_eval(p) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory, a checkpoint file (any known layout) or a released name",
    )
    p.add_argument(
        "--data",
        default=None,
        help="labelled folder / archive / dataset (default: the pretraining data)",
    )
    p.add_argument("--train-split", default=None, help="training split (default: the run's)")
    p.add_argument("--test-split", default=None, help="test split (default: the run's eval split)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size (default: the run's large crop size, else 224)",
    )
    p.add_argument("--limit", type=int, default=0, help="use N images of each split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--out",
        default=None,
        help="result JSON (default: RUN_DIR/eval/<protocol>.json for a run directory, "
        "else eval_results/<protocol>.json)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _ignore_arg(p)


def _ignore_arg(p) -> None:
    p.add_argument(
        "--ignore",
        nargs="*",
        default=[],
        choices=["projection_head", "prototypes", "head", "fc", "classifier"],
        help="checkpoint parts allowed to be missing or left out (default: none)",
    )


def _out_path(args, protocol: str) -> Path:
    if args.out:
        return Path(args.out)
    ck = Path(args.checkpoint)
    if ck.is_dir():
        return ck / "eval" / f"{protocol}.json"
    return Path("eval_results") / f"{protocol}.json"


def _cmd_eval(args) -> int:
    from swav.eval import protocols as P

    common = dict(
        data=args.data,
        train_split=args.train_split,
        test_split=args.test_split,
        size=args.size,
        limit=args.limit,
        seed=args.seed,
        out=_out_path(args, args.protocol),
    )
    prog = not args.no_progress
    if args.protocol == "knn":
        rec = P.run_knn(
            args.checkpoint,
            ks=args.k,
            temperature=args.temperature,
            cache_dir=args.cache,
            progress=prog,
            **common,
        )
    elif args.protocol == "linear":
        rec = P.run_linear(
            args.checkpoint,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            fast=args.fast,
            stages=args.stages,
            val_fraction=args.val_fraction,
            cache_dir=args.cache,
            progress=prog,
            **common,
        )
    elif args.protocol == "semisup":
        rec = P.run_semisup(
            args.checkpoint,
            fraction=args.fraction,
            subset_file=args.subset_file,
            epochs=args.epochs,
            batch_size=args.batch_size,
            **common,
        )
    elif args.protocol == "lowshot":
        rec = P.run_lowshot(
            args.checkpoint,
            shots=args.shots,
            draws=args.draws,
            cache_dir=args.cache,
            progress=prog,
            **common,
        )
    else:
        rec = P.run_cluster(args.checkpoint, progress=prog, **common)
    print(P.format_result(rec))
    print(f"result written to {common['out']}")
    return 0


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a backbone: knn, linear, semisup, lowshot, cluster")
    es = e.add_subparsers(dest="protocol", required=True)
    k = es.add_parser("knn", help="weighted cosine kNN on frozen features")
    _common_eval(k)
    k.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[10, 20, 100, 200],
        help="neighbours (default: 10 20 100 200)",
    )
    k.add_argument("--temperature", type=float, default=0.07, help="vote temperature (0.07)")
    k.add_argument("--cache", default=None, help="feature cache folder (default: none)")
    li = es.add_parser("linear", help="linear probe on the frozen backbone")
    _common_eval(li)
    li.add_argument("--epochs", type=int, default=100, help="epochs (default: 100)")
    li.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    li.add_argument("--lr", type=float, default=None, help="lr (default: 0.3 x batch / 256)")
    li.add_argument(
        "--fast",
        action="store_true",
        help="train on cached features without augmentation (default: augmented)",
    )
    li.add_argument(
        "--stages", action="store_true", help="per-stage probes: stem and stages 1-4 (fast mode)"
    )
    li.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="validation split carved from the training set (default: 0)",
    )
    li.add_argument("--cache", default=None, help="feature cache folder (default: none)")
    se = es.add_parser("semisup", help="fine-tune on 1%% or 10%% of the labels")
    _common_eval(se)
    se.add_argument("--fraction", type=float, default=0.1, help="labelled fraction (0.1)")
    se.add_argument("--subset-file", default=None, help="file listing the labelled images")
    se.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    se.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    lo = es.add_parser("lowshot", help="low-shot linear SVMs, k = 1 ... 96 per class")
    _common_eval(lo)
    lo.add_argument(
        "--shots",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32, 64, 96],
        help="examples per class (default: 1 2 4 8 16 32 64 96)",
    )
    lo.add_argument("--draws", type=int, default=5, help="random draws per k (default: 5)")
    lo.add_argument("--cache", default=None, help="feature cache folder (default: none)")
    cl = es.add_parser("cluster", help="prototype clustering: NMI, ARI, Hungarian accuracy")
    _common_eval(cl)
    for p in (k, li, se, lo, cl):
        p.set_defaults(func=_cmd_eval)
    r = sub.add_parser("report", help="gather a run's results into RUN_DIR/REPORT.md")
    r.add_argument("run_dir")
    r.set_defaults(func=lambda a: print(_report(a.run_dir)) or 0)


def _report(run_dir: str) -> str:
    from swav.eval.protocols import write_report

    path = write_report(run_dir)
    return f"{path.read_text()}\nwritten to {path}"


def _add_interop(sub) -> None:
    z = sub.add_parser("zoo", help="list the released checkpoints loadable by name")
    z.set_defaults(func=_cmd_zoo)
    x = sub.add_parser(
        "export", help="export a backbone (torchvision, timm, safetensors, detectron2, swav)"
    )
    x.add_argument("--checkpoint", required=True, help="run directory, file or released name")
    x.add_argument(
        "--format",
        default="torchvision",
        choices=["torchvision", "timm", "safetensors", "detectron2", "swav"],
        help="output format (default: torchvision)",
    )
    x.add_argument("--out", required=True, help="output file")
    x.add_argument("--download", action="store_true", help="fetch a released checkpoint")
    _ignore_arg(x)
    x.set_defaults(func=_cmd_export)
    em = sub.add_parser("embed", help="backbone features of every image, in order")
    em.add_argument("data", help="folder, archive or dataset name")
    em.add_argument("--checkpoint", required=True, help="run directory, file or released name")
    em.add_argument("--split", default="", help="split of the data (default: all)")
    em.add_argument("--size", type=int, default=None, help="image size (default: the run's)")
    em.add_argument("--out", required=True, help=".npy (+ .names.txt) or .parquet")
    em.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    em.add_argument("--no-progress", action="store_true", help="no progress bar")
    _ignore_arg(em)
    em.set_defaults(func=_cmd_embed)
    pr = sub.add_parser("predict", help="class and score per image (backbone + linear head)")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--checkpoint", required=True, help="backbone (with fc) or run directory")
    pr.add_argument(
        "--head",
        default=None,
        help="linear head file (e.g. swav_800ep_eval_linear); default: the checkpoint's fc layer",
    )
    pr.add_argument("--classes", default=None, help="file with one class name per line")
    pr.add_argument("--size", type=int, default=None, help="image size (default: the run's)")
    pr.add_argument("--topk", type=int, default=1, help="classes per image (default: 1)")
    pr.set_defaults(func=_cmd_predict)
    a = sub.add_parser("assign", help="highest-scoring prototype per image")
    a.add_argument("images", nargs="+", help="image files")
    a.add_argument("--checkpoint", required=True, help="run directory or SwAV checkpoint")
    a.add_argument("--size", type=int, default=None, help="image size (default: the run's)")
    a.set_defaults(func=_cmd_assign)


def _cmd_zoo(args) -> int:
    from swav.interop.zoo import RELEASED, cache_dir

    print(f"{'name':24s} {'arch':12s} {'top-1':>6s}  recipe")
    for name, r in RELEASED.items():
        cached = " (cached)" if (cache_dir() / r.file).exists() else ""
        print(f"{name:24s} {r.arch:12s} {r.top1 or '':>6}  {r.recipe}{cached}")
    print(
        f"\nload with swav.load_checkpoint(NAME, download=True) or --checkpoint NAME; cache: "
        f"{cache_dir()}"
    )
    return 0


def _transform_for(loaded, size):
    from swav.data.multicrop import IMAGENET_MEAN, IMAGENET_STD
    from swav.eval.features import EvalTransform

    mc = (loaded.meta.get("config") or {}).get("multicrop", {})
    size = size or (mc.get("sizes") or [224])[0]
    return EvalTransform(
        size,
        mc.get("mean", IMAGENET_MEAN),
        mc.get("std", IMAGENET_STD),
        crop_fraction=1.0 if size <= 64 else 0.875,
    )


def _cmd_export(args) -> int:
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.export import export_model

    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore, download=args.download)
    meta = {
        "arch": loaded.arch,
        "source": loaded.meta["source"],
        "layout": loaded.layout,
        "pretraining": loaded.meta.get("config"),
    }
    for f in export_model(loaded.model, args.out, args.format, meta):
        print(f"wrote {f}")
    return 0


def _cmd_embed(args) -> int:
    from swav.data.sources import open_source
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.inference import embed, save_embeddings

    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore)
    src = open_source(args.data, args.split)
    emb = embed(
        loaded.model,
        src,
        _transform_for(loaded, args.size),
        args.batch_size,
        progress=not args.no_progress,
    )
    for f in save_embeddings(emb, args.out):
        print(f"wrote {f}")
    print(f"{emb.features.shape[0]} images x {emb.features.shape[1]} features")
    return 0


def _cmd_predict(args) -> int:
    from swav.interop.checkpoints import load_checkpoint, load_linear_head
    from swav.interop.inference import predict
    from swav.interop.zoo import RELEASED, fetch

    loaded = load_checkpoint(args.checkpoint, ignore=["head"])
    head = loaded.classifier
    if args.head:
        path = (
            fetch(args.head)
            if args.head in RELEASED and not Path(args.head).exists()
            else args.head
        )
        head = load_linear_head(path)
    if head is None:
        raise FileNotFoundError("no classifier: the checkpoint has no fc layer; pass --head")
    classes = None
    if args.classes:
        classes = [c.strip() for c in Path(args.classes).read_text().splitlines() if c.strip()]
    for img, preds in zip(
        args.images,
        predict(
            loaded.model, head, args.images, _transform_for(loaded, args.size), classes, args.topk
        ),
    ):
        print(img + "\t" + "\t".join(f"{c} {p:.3f}" for c, p in preds))
    return 0


def _cmd_assign(args) -> int:
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.inference import assign

    loaded = load_checkpoint(args.checkpoint)
    for img, (k, s) in zip(
        args.images, assign(loaded.model, args.images, _transform_for(loaded, args.size))
    ):
        print(f"{img}\tprototype {k}\tscore {s:.3f}")
    return 0


_EXTRA_COMMANDS: list = [_add_eval, _add_interop]


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


__all__ = ["main", "build_parser"]
