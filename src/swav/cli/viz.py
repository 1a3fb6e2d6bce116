"""``swav viz curves | clusters | neighbours | embedding``: pictures of a run or a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from swav.cli.common import progress_options
from swav.cli.kinds import OutputFile, OutputFolder
from swav.values import COUNT, IMAGE_SIZE, LIMIT, InputFolder, Reference, Split, whole


def _view_options() -> argparse.ArgumentParser:
    """The model and the images a picture is made from."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Reference("checkpoint"),
        help="run directory, checkpoint file or name",
    )
    p.add_argument("--download", action="store_true", help="fetch a released checkpoint")
    p.add_argument(
        "--data",
        default=None,
        type=Reference("data"),
        help="folder, archive or dataset (default: the pretraining data)",
    )
    p.add_argument(
        "--split", default=None, type=Split(), help="split (default: the run's held-out split)"
    )
    p.add_argument(
        "--limit", type=LIMIT, default=2000, help="images used, at random (default: 2000; 0: all)"
    )
    p.add_argument("--size", type=IMAGE_SIZE, default=None, help="image size (default: the run's)")
    _out_options(p, "the PNG to write (default: a name in .)")
    return p


PICTURES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _out_options(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", default=None, type=OutputFile("picture", PICTURES), help=help)
    p.add_argument("--force", action="store_true", help="replace an existing --out file")


def register(sub: Any) -> None:
    v = sub.add_parser(
        "viz",
        help="pictures of a run or a model: curves, clusters, neighbours, embedding",
        description=__doc__,
    )
    vs = v.add_subparsers(dest="picture", required=True)
    c = vs.add_parser("curves", help="loss, learning rate, code entropy, prototypes, images/s")
    c.add_argument("run_dir", type=InputFolder("run directory"))
    _out_options(c, "PNG (default: RUN_DIR/curves.png)")
    c.set_defaults(func=_curves)
    parents = [_view_options(), progress_options()]
    g = vs.add_parser("clusters", parents=parents, help="the images of the most used prototypes")
    g.add_argument(
        "--prototypes", type=whole(0), nargs="+", default=None, help="these prototypes (0, 1, ...)"
    )
    g.add_argument("--count", type=COUNT, default=8, help="prototypes shown (default: 8)")
    g.add_argument("--top", type=COUNT, default=8, help="images per prototype (default: 8)")
    g.add_argument(
        "--export",
        default=None,
        type=OutputFolder("export folder"),
        help="folder: one sub-folder of images per prototype",
    )
    g.add_argument("--copy", action="store_true", help="copy images when exporting (default: link)")
    g.set_defaults(func=_clusters)
    n = vs.add_parser("neighbours", parents=parents, help="each query beside its nearest images")
    n.add_argument("queries", nargs="+", type=Reference("image"), help="query image files")
    n.add_argument("--k", type=COUNT, default=8, help="neighbours per query (default: 8)")
    n.set_defaults(func=_neighbours)
    e = vs.add_parser("embedding", parents=parents, help="2-D map of the features")
    e.add_argument("--method", default="auto", choices=["auto", "umap", "tsne"])
    e.add_argument("--thumbnails", action="store_true", help="draw the images instead of dots")
    e.set_defaults(func=_embedding)


def _load(args: argparse.Namespace) -> Any:
    from swav.viz.data import load_view

    return load_view(
        args.checkpoint,
        args.data,
        args.split,
        args.limit,
        args.size,
        args.download,
        progress=not args.no_progress,
    )


def _curves(args: argparse.Namespace) -> int:
    from swav.viz.curves import plot_run_curves

    print(f"wrote {plot_run_curves(args.run_dir, args.out)}")
    return 0


def _clusters(args: argparse.Namespace) -> int:
    from swav.viz.clusters import (
        draw_gallery,
        draw_usage,
        export_clusters,
        gallery_listing,
        prototype_groups,
    )

    view = _load(args)
    groups = prototype_groups(
        view.scores_or_error(), view.source, args.top, args.prototypes, args.count
    )
    out = Path(args.out or "clusters.png")
    print(f"wrote {draw_gallery(groups, view.source, out)}")
    print(f"wrote {draw_usage(view.scores_or_error(), out.with_name(out.stem + '_usage.png'))}")
    listing = out.with_suffix(".json")
    listing.write_text(json.dumps(gallery_listing(groups, view.source), indent=1))
    print(f"wrote {listing}")
    for g in groups:
        print(g.caption())
    if args.export:
        folders = export_clusters(groups, view.source, args.export, args.copy)
        print(f"exported {sum(len(g.members) for g in groups)} images into {len(folders)} folders")
    return 0


def _neighbours(args: argparse.Namespace) -> int:
    import torch

    from swav.interop.inference import read_image, unreadable_error
    from swav.viz.neighbours import draw_neighbours, nearest

    # the queries (a few images) decoded once, all checked before the model and data are loaded
    read = [(p, *read_image(p)) for p in args.queries]
    bad = [f"{p} ({reason})" for p, _, reason in read if reason is not None]
    if bad:
        raise unreadable_error(bad, len(args.queries))
    good = [p for p, _, _ in read]
    view = _load(args)
    tf = view.loaded.eval_transform(args.size)
    with torch.no_grad():
        q = view.loaded.model.eval().forward_backbone(torch.stack([tf(img) for _, img, _ in read]))
    found = nearest(q, view.features, args.k)
    print(f"wrote {draw_neighbours(good, found, view.source, args.out or 'neighbours.png')}")
    names = view.source.item_names()
    for path, idx, sim in zip(good, found.indices.tolist(), found.similarities.tolist()):
        print(path + "\t" + "\t".join(f"{names[i]} {s:.3f}" for i, s in zip(idx, sim)))
    return 0


def _embedding(args: argparse.Namespace) -> int:
    from swav.viz.embedding import draw_embedding, project_2d

    view = _load(args)
    xy, method = project_2d(view.features, args.method)
    protos = view.assignments().numpy() if view.scores is not None else None
    out = args.out or "embedding.png"
    print(f"wrote {draw_embedding(xy, method, view.source, out, protos, args.thumbnails)}")
    return 0
