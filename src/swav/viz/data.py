"""What the pictures of a model are made from: a checkpoint, one split of some data, and the
features and prototype scores of its readable images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swav.data.images import DataError, ImageSource
from swav.data.sources import limit_source, open_source
from swav.interop.checkpoints import LoadedModel, load_checkpoint
from swav.model.features import extract_features


@dataclass
class ViewData:
    """A model and the images it is shown on: ``source`` holds only the readable images, row i
    of ``features`` / ``scores`` belongs to ``source`` item i."""

    loaded: LoadedModel
    source: ImageSource
    features: torch.Tensor
    scores: torch.Tensor | None
    skipped: int = 0
    """Images left out because they could not be read."""

    @property
    def labels(self) -> list[int]:
        return list(self.source.labels)

    @property
    def labelled(self) -> bool:
        return self.source.labelled

    def scores_or_error(self) -> torch.Tensor:
        """The prototype scores (first head); refused for a model without prototypes."""
        if self.scores is None:
            raise DataError(
                "this checkpoint has no prototypes (a backbone only): it has no clusters; "
                "use the training checkpoint (the run directory)"
            )
        return self.scores

    def assignments(self) -> torch.Tensor:
        """Each image's highest-scoring prototype (first head)."""
        return self.scores_or_error().argmax(1)


def load_view(
    checkpoint: str,
    data: str | None = None,
    split: str | None = None,
    limit: int = 2000,
    size: int | None = None,
    download: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> ViewData:
    """The model of ``checkpoint`` and the features of ``data`` (default: the pretraining
    data's held-out split, else its training split), at most ``limit`` images (0: all)."""
    loaded = load_checkpoint(checkpoint, download=download)
    dcfg = loaded.pretraining.get("data", {})
    data = data or dcfg.get("source")
    if not data:
        raise DataError("no data given: pass --data (a folder, an archive or a dataset)")
    named = split is not None  # a split the user named must be there
    if split is None and data == dcfg.get("source"):
        split = dcfg.get("eval_split") or dcfg.get("split", "")
    root = dcfg.get("root", "~/.cache/swav/datasets")
    opened = open_source(data, split or "", root, False, seed, strict=named)
    source = limit_source(opened, limit, seed)
    tf = loaded.eval_transform(size)
    f = extract_features(loaded.model, source, tf, batch_size=128, progress=progress)
    ok = f.ok if f.ok is not None else torch.ones(len(source), dtype=torch.bool)
    keep = [i for i, good in enumerate(ok.tolist()) if good]
    if not keep:
        raise DataError(f"none of the {len(source)} images of {data} could be read")
    v = f.valid()
    return ViewData(loaded, source.subset(keep), v.features, v.scores, len(source) - len(keep))
