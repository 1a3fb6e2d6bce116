"""``swav zoo``, ``swav export``, ``swav hub push``, ``swav embed``, ``swav predict`` and
``swav assign``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swav.cli.common import batch_options, checkpoint_options, progress_options, size_options
from swav.cli.kinds import OutputFile, OutputFolder, OutputPath
from swav.engine.run_dir import guard_output
from swav.errors import UsageError
from swav.values import COUNT, EXPORT_FORMATS, InputFile, Reference, Split

HUB_LICENSES = (
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc0-1.0",
    "openrail",
    "other",
)
"""Licence identifiers of the hub's model cards offered by ``swav hub push --license``."""


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
    x.add_argument(
        "--out",
        required=True,
        type=OutputPath(),
        help="output file (a folder for --format timm)",
    )
    x.add_argument(
        "--heads",
        action="store_true",
        help="--format onnx: the whole model (features, embedding, prototype scores), not the "
        "backbone's features alone",
    )
    x.add_argument("--force", action="store_true", help="replace an existing output")
    x.set_defaults(func=_export)
    _register_hub(sub)
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


def _register_hub(sub: Any) -> None:
    h = sub.add_parser(
        "hub", help="Hugging Face Hub: push a model (weights, config.json, model card)"
    )
    hs = h.add_subparsers(dest="hub_command", required=True)
    hp = hs.add_parser(
        "push",
        help="write a model folder and upload it to a hub repository",
        description="Write the folder a hub repository holds (model.safetensors, "
        "swav_heads.safetensors, config.json for timm and swav, a README.md model card from the "
        "run) and upload it, with the token of HF_TOKEN or of `hf auth login`. Loaded back "
        'with --checkpoint hf-hub:OWNER/NAME or timm.create_model("hf-hub:OWNER/NAME", '
        "pretrained=True).",
    )
    hp.add_argument(
        "source",
        type=Reference("checkpoint"),
        help="a run directory, a checkpoint file (any known layout) or a released name",
    )
    hp.add_argument("--repo", required=True, type=Reference("repository"), help="OWNER/NAME")
    hp.add_argument(
        "--out",
        default=None,
        type=OutputFolder("model folder"),
        help="keep the folder written here (default: a temporary folder, removed after upload)",
    )
    hp.add_argument(
        "--dry-run",
        action="store_true",
        help="write the folder (--out) and upload nothing",
    )
    hp.add_argument("--private", action="store_true", help="create the repository as private")
    hp.add_argument(
        "--license",
        default=None,
        choices=HUB_LICENSES,
        help="the model card's licence (default: none stated)",
    )
    hp.add_argument(
        "--download",
        action="store_true",
        help="fetch a released checkpoint (SOURCE is a name) into the cache when missing",
    )
    hp.add_argument(
        "--force", action="store_true", help="write into an --out folder that has files"
    )
    hp.set_defaults(func=_hub_push)


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
    from swav.interop.export import check_export_output, export_model

    if args.heads and args.format != "onnx":
        raise UsageError("--heads is for --format onnx (the other formats hold the backbone)")
    check_export_output(args.out, args.format, args.force)  # before any loading work
    loaded = load_checkpoint(args.checkpoint, ignore=args.ignore, download=args.download)
    meta = {
        "arch": loaded.arch,
        "source": loaded.meta["source"],
        "layout": loaded.layout,
        "pretraining": loaded.meta.get("config"),
    }
    written = export_model(
        loaded.model, args.out, args.format, meta, force=args.force, heads=args.heads
    )
    for f in written:
        print(f"wrote {f}")
    if args.format == "onnx":
        _check_onnx(loaded.model, written[0], meta, args.heads)
    if args.format == "timm":
        print(f'load with timm.create_model("local-dir:{args.out}", pretrained=True)')
    return 0


def _check_onnx(model: Any, path: Path, meta: dict[str, Any], heads: bool) -> None:
    """Run the exported file with onnxruntime beside the PyTorch model and say how far apart
    they are (on 4 random images of the model's input size)."""
    import importlib.util

    import torch

    from swav.interop.onnx import compare_with_torch, input_size

    if importlib.util.find_spec("onnxruntime") is None:
        print("not checked: onnxruntime is not installed (pip install 'swav[onnx]')")
        return
    size = input_size(meta)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    diff = compare_with_torch(model, path, x, heads)
    print(f"onnxruntime vs PyTorch on 4 images of {size} px: max |difference| {diff:.2e}")


def _hub_push(args: argparse.Namespace) -> int:
    import tempfile

    from swav.interop.model_folder import split_hub_name
    from swav.publish import push, write_hub_folder

    repo, revision = split_hub_name("hf-hub:" + args.repo)
    if revision:
        raise UsageError(f"--repo {args.repo}: name the repository alone (OWNER/NAME)")
    if args.dry_run and args.out is None:
        raise UsageError("--dry-run writes the folder only: give it with --out FOLDER")
    out = None
    if args.out is not None:
        out = guard_output(args.out, args.force, folder=True, what="--out", empty=True)
    with tempfile.TemporaryDirectory(prefix="swav-hub-") as tmp:
        folder = out or Path(tmp)
        written = write_hub_folder(
            args.source, folder, repo_id=repo, license=args.license, download=args.download
        )
        print(f"wrote {folder}: " + ", ".join(p.name for p in written))
        if args.dry_run:
            print(
                f"dry run: nothing uploaded; push with `swav hub push {args.source} --repo {repo}`"
            )
            return 0
        url = push(folder, repo, private=args.private)
    print(f"pushed {repo}: {url}")
    print(
        f"load with --checkpoint hf-hub:{repo} --download, or "
        f'timm.create_model("hf-hub:{repo}", pretrained=True)'
    )
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
