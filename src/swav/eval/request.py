"""One evaluation request, resolved once: the checkpoint, the labelled data (train and test
splits), the evaluation transform, and where the result goes. Every protocol takes it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swav.data.images import DataError, ImageSource
from swav.data.sources import limit_source, open_source
from swav.data.transforms import EvalTransform
from swav.engine.run_dir import RunDir, guard_output
from swav.interop.checkpoints import LoadedModel, load_checkpoint
from swav.model.features import Features, extract_features
from swav.values import BATCH, LIMIT

log = logging.getLogger(__name__)


@dataclass
class EvalRequest:
    """A loaded model and labelled data, ready for any protocol.

    ``batch_size`` is the batch of feature extraction and of the protocols that train;
    ``cache_dir`` keeps extracted features keyed by checkpoint, data and transform."""

    loaded: LoadedModel
    data: str
    train_split: str
    test_split: str
    train: ImageSource
    test: ImageSource
    transform: EvalTransform
    seed: int = 0
    out: Path | None = None
    cache_dir: str | None = None
    batch_size: int = 256
    workers: int = 0
    progress: bool = False
    started: float = field(default_factory=time.time)
    unreadable: dict[str, int] = field(default_factory=dict)
    """Images left out of the evaluation because they could not be read, per split."""

    def description(self) -> dict[str, Any]:
        """What was evaluated, for the result record."""
        return {
            "checkpoint": self.loaded.meta["source"],
            "layout": self.loaded.layout,
            "arch": self.loaded.arch,
            "data": self.data,
            "train_split": self.train_split,
            "test_split": self.test_split,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "size": self.transform.size,
            "classes": len(self.train.classes),
            **({"unreadable_images": dict(self.unreadable)} if self.unreadable else {}),
        }

    def features(self, source: ImageSource) -> Features:
        """Features (and prototype scores) of the readable images of ``source``."""
        key = None
        if self.cache_dir:
            src = Path(self.loaded.meta["source"])
            st = src.stat()
            key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        f = extract_features(
            self.loaded.model,
            source,
            self.transform,
            self.batch_size,
            self.workers,
            progress=self.progress,
            cache_dir=self.cache_dir,
            cache_key=key,
        )
        bad = 0 if f.ok is None else int((~f.ok).sum())
        if bad:
            split = self.train_split if source is self.train else self.test_split
            self.unreadable[split] = bad
            log.warning(
                "%d of %d images of %s could not be read and are left out of the evaluation",
                bad,
                len(source),
                source.origin,
            )
            if bad == len(source):
                raise DataError(
                    f"none of the {len(source)} images of {source.origin} could be read"
                )
        return f.valid()


HELD_OUT_NAMES = ("val", "test", "valid", "validation")


def _folder_splits(
    data: str, train: str | None, test: str | None, dcfg: dict[str, Any]
) -> tuple[str, str]:
    """The training and test sub-folders of a folder, which must exist (a folder reads every
    image when its split is missing, which here would test on the training images). A test
    split not given is the first of the pretraining's eval split, val, test, valid, validation
    that is there."""
    folder = Path(data).expanduser()
    present = {d.name for d in folder.iterdir() if d.is_dir()}
    advice = (
        "give a folder with train/ and val/ (or test/) class folders, or name its sub-folders "
        "with --train-split / --test-split"
    )
    train = train if train is not None else "train"
    if train not in present:
        raise DataError(f"{data} has no '{train}' sub-folder to train on: {advice}")
    if test is None:
        wanted = [dcfg.get("eval_split"), *HELD_OUT_NAMES]
        test = next((n for n in wanted if n and n in present and n != train), None)
        if test is None:
            raise DataError(f"{data} has no held-out sub-folder beside '{train}': {advice}")
    elif test not in present:
        raise DataError(f"{data} has no '{test}' sub-folder to test on: {advice}")
    return train, test


def resolve_request(
    checkpoint: str | Path,
    data: str | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    size: int | None = None,
    limit: int = 0,
    seed: int = 0,
    ignore: Iterable[str] = (),
    download: bool = False,
    download_data: bool = False,
    out: str | Path | None = None,
    cache_dir: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> EvalRequest:
    """Load the checkpoint and the labelled data. Data, splits, image size and normalisation
    default to the pretraining configuration when the checkpoint carries one (else 224 px,
    ImageNet statistics). ``download`` fetches a released checkpoint into the cache;
    ``download_data`` lets a torchvision dataset download."""
    LIMIT.check(limit, "limit")
    BATCH.check(batch_size, "batch_size")
    if out:  # before any features are computed; never a run's own file
        guard_output(out, force=True, what="result file")
    loaded = load_checkpoint(checkpoint, ignore=ignore, download=download)
    dcfg = loaded.pretraining.get("data", {})
    data = data or dcfg.get("source")
    if not data:
        raise DataError("no data given: pass --data (a labelled folder, archive or dataset)")
    if Path(data).expanduser().is_dir():
        train_split, test_split = _folder_splits(data, train_split, test_split, dcfg)
    train_split = train_split if train_split is not None else dcfg.get("split", "train")
    test_split = test_split if test_split is not None else dcfg.get("eval_split", "val")
    root = dcfg.get("root", "~/.cache/swav/datasets")
    splits = []
    for name, split in (("training", train_split), ("test", test_split)):
        opened = open_source(data, split, root, download_data, seed, strict=True)
        src = limit_source(opened, limit, seed)
        if not src.labelled:
            raise DataError(f"the {name} split of {data} has no labels (class folders)")
        splits.append(src)
    if len(set(splits[0].labels)) < 2:
        raise DataError(
            f"the training split of {data} has one class ({splits[0].classes[0]!r}): evaluation "
            "needs two or more class folders (an unlabelled tree such as a/b/*.jpg is one class)"
        )
    if splits[0].origin == splits[1].origin:
        raise DataError(
            f"{data} has no separate '{train_split}' and '{test_split}' splits, so the test "
            "images would be the training images: give a folder with train/ and val/ (or "
            "test/) sub-folders, or name them with --train-split / --test-split"
        )
    return EvalRequest(
        loaded=loaded,
        data=data,
        train_split=train_split,
        test_split=test_split,
        train=splits[0],
        test=splits[1],
        transform=loaded.eval_transform(size),
        seed=seed,
        out=Path(out) if out else None,
        cache_dir=cache_dir,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
    )


def default_result_path(checkpoint: str | Path, protocol: str) -> Path:
    """``RUN_DIR/eval/<protocol>.json`` for a run directory, else
    ``eval_results/<protocol>.json``."""
    ck = Path(checkpoint)
    if ck.is_dir():
        return RunDir(ck).eval_result(protocol)
    return Path("eval_results") / f"{protocol}.json"
