"""``swav zoo``, ``swav export``, ``swav embed``, ``swav predict`` and ``swav assign``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swav.cli.common import batch_options, checkpoint_options, progress_options, size_options
from swav.cli.kinds import OutputFile
from swav.engine.run_dir import check_writable
from swav.errors import UsageError
from swav.values import COUNT, EXPORT_FORMATS, InputFile, Reference, Split


def register(sub: Any) -> None:
    z = sub.add_parser("zoo", help="list the released checkpoints loadable by name")
    z.set_defaults(func=_zoo)
    x = sub.add_parser(
        "export",
        help="export a backbone (" + ", ".join(EXPORT_FORMATS) + ")",
        parents=[checkpoint_options()],
    )
    x.add_argument(
        "--format",
        default="torchvision",
        choices=EXPORT_FORMATS,
        help="output format (torchvision)",
    )
    x.add_argument("--out", required=True, type=OutputFile(), help="output file")
    x.add_argument("--force", action="store_true", help="replace an existing output file")
    x.set_defaults(func=_export)
    em = sub.add_parser(
        "embed",
        help="backbone features of every image, in order",
        parents=[checkpoint_options(), size_options(), batch_options(), progress_options()],
    )
    em.add_argument("data", type=Reference("data"), help="folder, archive or dataset name")
    em.add_argument("--split", default="", type=Split(), help="split of the data (default: all)")
    em.add_argument(
        "--out",
        required=True,
        type=OutputFile("embeddings file", (".npy", ".parquet")),
        help=".npy (+ .names.txt) or .parquet",
    )
    em.add_argument("--force", action="store_true", help="replace an existing output file")
    em.set_defaults(func=_embed)
    pr = sub.add_parser(
        "predict",
        help="class and score per image (backbone + linear head)",
        parents=[checkpoint_options(), size_options()],
    )
    pr.add_argument("images", nargs="+", type=Reference("image"), help="image files")
    pr.add_argument(
        "--head",
        default=None,
        type=Reference("linear head"),
        help="linear head file (e.g. swav_800ep_eval_linear); default: the checkpoint's fc layer",
    )
    pr.add_argument(
        "--classes",
        default=None,
        type=InputFile("class list"),
        help="file with one class name per line",
    )
    pr.add_argument("--topk", type=COUNT, default=1, help="classes per image (default: 1)")
    pr.set_defaults(func=_predict)
    a = sub.add_parser(
        "assign",
        help="highest-scoring prototype per image",
        parents=[checkpoint_options(), size_options()],
    )
    a.add_argument("images", nargs="+", type=Reference("image"), help="image files")
    a.set_defaults(func=_assign)


def _zoo(args: argparse.Namespace) -> int:
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


def _export(args: argparse.Namespace) -> int:
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.export import export_model

    check_writable(args.out, args.force)  # before any loading work
    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore, download=args.download)
    meta = {
        "arch": loaded.arch,
        "source": loaded.meta["source"],
        "layout": loaded.layout,
        "pretraining": loaded.meta.get("config"),
    }
    for f in export_model(loaded.model, args.out, args.format, meta, force=args.force):
        print(f"wrote {f}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from swav.data.sources import open_source
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.inference import embed, embedding_path, save_embeddings

    embedding_path(args.out, args.force)  # before any work
    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore, download=args.download)
    src = open_source(args.data, args.split, strict=True)
    tf = loaded.eval_transform(args.size)
    emb = embed(loaded.model, src, tf, args.batch_size, progress=not args.no_progress)
    for f in save_embeddings(emb, args.out, force=args.force):
        print(f"wrote {f}")
    print(f"{emb.features.shape[0]} images x {emb.features.shape[1]} features")
    if emb.skipped:
        print(f"{len(emb.skipped)} unreadable images left out (named in the warning above)")
    return 0


def _refuse_unless_one_readable(paths: list[str]) -> None:
    """Refused at once, before any model is loaded, when none of ``paths`` can be read (the
    check stops at the first readable one; the others are read once, when used)."""
    from swav.interop.inference import read_image, unreadable_error

    bad = []
    for p in paths:
        reason = read_image(p)[1]
        if reason is None:
            return
        bad.append(f"{p} ({reason})")
    raise unreadable_error(bad, len(paths))


def _report_unreadable(bad: list[str], total: int) -> int:
    """After the results of the readable images: an error for the others (exit code 2)."""
    from swav.interop.inference import unreadable_error

    if bad:
        raise unreadable_error(bad, total)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from swav.interop.checkpoints import CheckpointError, load_checkpoint, load_linear_head
    from swav.interop.inference import classify, image_batches
    from swav.interop.zoo import RELEASED, fetch

    _refuse_unless_one_readable(args.images)
    loaded = load_checkpoint(args.checkpoint, ignore=[*args.ignore, "head"], download=args.download)
    head = loaded.classifier
    if args.head:
        released = args.head in RELEASED and not Path(args.head).exists()
        head = load_linear_head(fetch(args.head, args.download) if released else args.head)
    if head is None:
        raise CheckpointError("no classifier: the checkpoint has no fc layer; pass --head")
    head.check(loaded.model)  # a head of another width is refused before the images are read
    classes = None
    if args.classes:
        classes = read_class_names(args.classes, head.out_features)
    bad: list[str] = []
    for paths, x in image_batches(args.images, loaded.eval_transform(args.size), bad):
        for img, row in zip(paths, classify(loaded.model, head, x, classes, args.topk)):
            print(img + "\t" + "\t".join(f"{c} {p:.3f}" for c, p in row), flush=True)
    return _report_unreadable(bad, len(args.images))


def read_class_names(path: str, n_classes: int) -> list[str]:
    """One class name per line, as many as the classifier has classes."""
    try:
        names = [c.strip() for c in Path(path).read_text().splitlines() if c.strip()]
    except UnicodeDecodeError as e:
        raise UsageError(f"--classes {path} is not a text file ({e.reason})") from None
    if len(names) != n_classes:
        raise UsageError(
            f"--classes {path} names {len(names)} classes, the classifier has {n_classes}: give "
            "one name per line for each class, in the classifier's order"
        )
    return names


def _assign(args: argparse.Namespace) -> int:
    from swav.interop.checkpoints import load_checkpoint
    from swav.interop.inference import image_batches, nearest_prototype, require_prototypes

    _refuse_unless_one_readable(args.images)
    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore, download=args.download)
    require_prototypes(loaded.model)
    bad: list[str] = []
    for paths, x in image_batches(args.images, loaded.eval_transform(args.size), bad):
        for img, (k, s) in zip(paths, nearest_prototype(loaded.model, x)):
            print(f"{img}\tprototype {k}\tscore {s:.3f}", flush=True)
    return _report_unreadable(bad, len(args.images))
