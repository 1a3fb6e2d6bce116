"""Data at scale: how long opening a dataset takes and what it holds in memory, and how many
images per second a loader worker turns into multi-crops, as uint8 or float.

    python benchmarks/data.py                       # both parts; writes results/data.json
    python benchmarks/data.py --only listing --files 1000000
    python benchmarks/data.py --only loader

listing: an ImageFolder tree of ``--files`` empty ``.jpg`` files in 1,000 class folders (the
shape of ImageNet's train split; the listing never opens a file), opened in fresh processes:
without the cache (every process lists the tree), the first open with the cache (lists and
writes the cache), and a cached open; and the same for the Imagenette ``.tar.gz`` of
``../shared/data`` (without the cache every process decompresses it into memory). Each open
reports its time and the resident memory it added (VmRSS after minus before).

cores: training images/s of the Imagenette recipe at 64 px for several splits of the cores
between intra-op threads and loader workers, the budget's own choice first.

loader: a DataLoader over a 500 x 375 JPEG (an Imagenette photo; decode included) with the
ImageNet recipe's crops (2 x 224 + 6 x 96), 1 and 2 worker processes, crops shipped as uint8
(normalised on the training device) against float (normalised in the worker). The main process
only receives the batches, as a GPU's feeding process does; images/s per worker gives the
number of cores one GPU needs at a given rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"

OPEN_CODE = """
import json, os, sys, time
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
from swav.data.sources import open_source
split = sys.argv[2]
before, t = rss(), time.perf_counter()
src = open_source(sys.argv[1], split)
names = src.item_names()
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": rss() - before, "images": len(src),
                  "last": str(src.items[len(src) - 1])[:80]}))
"""


def make_tree(root: Path, files: int, classes: int = 1000) -> None:
    per = -(-files // classes)
    made = 0
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(min(per, files - made)):
            os.close(os.open(d / f"n{c:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
        made += min(per, files - made)


def open_in_fresh_process(source: str, split: str, cache: str) -> dict:
    env = dict(os.environ, SWAV_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", OPEN_CODE, source, split],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}


def bench_listing(files: int, workdir: Path) -> dict:
    out: dict = {}
    tree = workdir / "tree"
    t = time.perf_counter()
    make_tree(tree, files)
    print(f"made {files} files in {time.perf_counter() - t:.0f} s", flush=True)
    archive = SHARED / "imagenette-96.tar.gz"
    cases = [(f"folder_{files}", str(tree), "")]
    if archive.exists():
        cases.append(("imagenette96_tar_gz", str(archive), "train"))
    for name, source, split in cases:
        cache = str(workdir / f"cache-{name}")
        r = {
            "uncached": open_in_fresh_process(source, split, "off"),
            "first_open_with_cache": open_in_fresh_process(source, split, cache),
            "cached": open_in_fresh_process(source, split, cache),
        }
        r["speedup_cached_vs_uncached"] = round(
            r["uncached"]["seconds"] / max(r["cached"]["seconds"], 1e-4), 1
        )
        r["memory_ratio_uncached_vs_cached"] = round(
            r["uncached"]["rss_mb"] / max(r["cached"]["rss_mb"], 0.1), 1
        )
        out[name] = r
        print(name, json.dumps(r), flush=True)
    shutil.rmtree(tree, ignore_errors=True)
    return out


def bench_loader(images: int = 96, batch: int = 16) -> dict:
    sys.path.insert(0, str(HERE))
    from perf import test_jpeg

    from swav.data.images import ImageSource
    from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
    from swav.data.multicrop import MultiCrop

    jpeg = test_jpeg()
    source = ImageSource([jpeg] * images, [-1] * images, [], "bench")
    mc = MultiCrop()  # 2 x 224 + 6 x 96, the ImageNet recipe
    out: dict = {}
    for workers in (1, 2):
        for transfer in ("uint8", "float"):
            dataset = MultiCropDataset(source, mc, as_uint8=transfer == "uint8")
            sampler = EpochSampler(images, batch, seed=0)
            best = 0.0
            for epoch in range(2):  # the first pass also starts the workers
                sampler.set_epoch(epoch)
                loader = make_loader(dataset, sampler, batch, workers)
                t = time.perf_counter()
                n, nbytes = 0, 0
                for crops, *_ in loader:
                    n += crops[0].shape[0]
                    nbytes += sum(c.nbytes for c in crops)
                best = max(best, n / (time.perf_counter() - t))
            r = {
                "images_per_s": round(best, 1),
                "images_per_s_per_worker": round(best / workers, 1),
                "mb_per_image": round(nbytes / n / 1e6, 3),
            }
            out[f"{workers}_workers_{transfer}"] = r
            print(workers, transfer, json.dumps(r), flush=True)
    per_worker = max(out["1_workers_uint8"]["images_per_s"], 1e-9)
    out["workers_for_1000_img_s"] = round(1000 / per_worker, 1)
    out["workers_for_2500_img_s"] = round(2500 / per_worker, 1)
    return out


CORES_SPLITS = [(0, -1), (2, 1), (2, 2), (1, 2)]
"""(train.threads, data.workers): the budget's choice (0, -1), and the others on 2 cores."""


def bench_cores(iters: int = 60) -> dict:
    """Training images/s of the Imagenette recipe (ResNet-18, 2 x 64 + 4 x 32, batch 64) for
    several splits of the cores between intra-op threads and loader workers, each in a fresh
    process, measured over the iterations after the first ten."""
    archive = SHARED / "imagenette-96.tar.gz"
    out: dict = {}
    for threads, workers in CORES_SPLITS:
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "swav.cli", "pretrain", "--no-progress"]
            cmd += ["--data", str(archive), "--run-dir", d, "multicrop.sizes=[64,32]"]
            cmd += [f"train.threads={threads}", f"data.workers={workers}"]
            cmd += [f"train.iters_per_epoch={iters}", "train.epochs=1", "train.log_every=10"]
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            split = [ln for ln in done.stderr.splitlines() if "cores:" in ln]
            rows = [json.loads(ln) for ln in (Path(d) / "metrics.jsonl").read_text().splitlines()]
            rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:]
        key = "auto" if threads == 0 else f"{threads}_threads_{workers}_workers"
        out[key] = {
            "images_per_s": round(sorted(rates)[len(rates) // 2], 1),
            "split": split[-1].split("cores: ")[-1].split(":")[0] if split else "",
        }
        print(key, json.dumps(out[key]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["listing", "loader", "cores"])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None, help="where the file tree is made (a temp dir)")
    ap.add_argument("--out", default=str(HERE / "results" / "data.json"))
    args = ap.parse_args()
    out_path = Path(args.out)
    record = json.loads(out_path.read_text()) if out_path.exists() else {}
    record["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": "none: a 1-GPU run's images/s was not measured on this machine",
    }
    if "listing" in args.only:
        with tempfile.TemporaryDirectory(dir=args.workdir) as d:
            record["listing"] = bench_listing(args.files, Path(d))
            record["listing"]["command"] = (
                f"python benchmarks/data.py --only listing --files {args.files}"
            )
    if "loader" in args.only:
        torch.set_num_threads(1)
        record["loader"] = bench_loader()
        record["loader"]["command"] = "python benchmarks/data.py --only loader"
    if "cores" in args.only:
        record["cores"] = bench_cores()
        record["cores"]["command"] = "python benchmarks/data.py --only cores"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
