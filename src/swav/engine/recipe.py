"""A recipe for one's own images: settings chosen from the data and the hardware.

``swav pretrain --data PATH`` without a preset starts from this recipe instead of the ImageNet
one. Each choice comes with its reason, printed at the start of the run; every value can still
be overridden with ``key=value``. The rules:

- **crops** follow the images' typical size: the large crops at about the images' shorter side
  (32, 64, 96, 160 or 224 px), the small ones at half of that; 2 + 4 crops on a CPU, 2 + 6 on GPUs;
  for 32 px images on a CPU, crops of 24 + 12 px with the whole images evaluated at 32
  (``multicrop.eval_size``) and colour jitter at half strength (SimCLR's CIFAR setting): 1.8x
  the steps in the same time (on CIFAR-10 at 45 minutes, kNN 53.0 against 43.8 with 32 + 16 px
  crops at full jitter, ``benchmarks/RESULTS.md``);
- **backbone**: ResNet-50 on GPUs for 200k images or more, else ResNet-18 (with the small-image
  stem for crops of 40 px or less). On a CPU with a time budget the number of steps decides:
  the recipe times a step of each of ``CPU_BACKBONES`` on synthetic crops (a few seconds) and
  takes the largest that affords ``STEPS_WANTED`` steps in the budget, else the fastest. A large
  network given few steps ends below its own random initialisation (ResNet-18 for 15 minutes on
  the CIFAR-10 vehicles: 230 steps, kNN 53.0 against 55.2 at random init), while the narrow
  ResNet makes 4.5x the steps in the same time and ends above it (57.8 against 53.3);
- **batch**: 64 per process on a CPU, 256 per GPU (64 for ResNet-50 at 160 px or more);
- **small batches** (a global batch under 256, e.g. on a CPU): 100 prototypes, no queue, a
  32-d embedding and temperature 0.2. At initialisation the cosines between 128-d vectors all
  sit near 0, so the codes of a small batch start nearly uniform and the run drifts into
  collapse; 32-d embeddings spread the scores and a softer temperature keeps the first steps
  from flattening the predictions (measured on Imagenette, ``benchmarks/RESULTS.md``);
- **large batches**: about one prototype per 20 images (100 to 3000, the paper's value), the
  paper's 128-d embedding and temperature 0.1, and a queue when the global batch is smaller
  than 1.5 K (the paper's small-batch recipe: 256 + 3840 for K = 3000; never more than a
  quarter of the data, K lowered when that cap binds), started after 10 % of the run;
- **schedule**: LARS on every parameter (as the reference) at 0.6 x batch / 256, never below
  0.6, on GPUs; on a CPU at 1.2, as a budget buys few steps. Imagenette at 32 px for 30 minutes
  ended at kNN 57.2 / linear 62.4 at 1.2, 51.5 / 57.5 at 0.6 and 42.6 / 53.0 at 2.4, whose kNN
  sat at the random network's level for the first half of the run (as it did for the first
  epochs on the CIFAR-10 vehicles, where 2.4 had been chosen for its linear probe); a warm-up
  of 5 % of the run; prototypes frozen for the first 2 %; collapse handled by recovery;
- **length**: 200 epochs on GPUs; on a CPU a time budget (``train.time_budget``, 30 minutes):
  the run times its steps and sets its epochs to end on time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from swav.data.images import DataError, ImageSource, load_rgb
from swav.data.sources import open_source
from swav.engine.budget import format_duration
from swav.engine.runtime import cpu_supports_bf16
from swav.model.swav import build_model
from swav.run_length import duration

CROP_SIZES = (32, 64, 96, 160, 224)
CPU_BACKBONES = ("resnet18", "resnet18_half", "resnet_tiny")
"""The backbones the recipe chooses from on a CPU, largest first (the last is the fastest)."""
STEPS_WANTED = 4000
"""Steps a budget should afford the backbone the recipe chooses on a CPU, timed on synthetic
crops (a real step also waits for its data: on 2 cores about half of them are made)."""
CPU_BASE_LR = 1.2
"""LARS base learning rate of the recipe on a CPU: twice the 0.6 the rule 0.6 x batch / 256
(at least 0.6) gives a batch of 64 (``benchmarks/RESULTS.md``: 0.6, 1.2 and 2.4 compared)."""
StepTimer = Callable[[str, "Recipe"], float]
DEFAULT_CPU_BUDGET = "30m"
"""The time a run on a CPU is given when the user names neither a budget nor epochs."""


@dataclass
class Recipe:
    """Overrides (``key -> value``) and the reason for each."""

    settings: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, reason: str) -> None:
        self.settings[key] = value
        self.reasons[key] = reason

    def overrides(self) -> list[str]:
        """The settings as ``key=value`` overrides (lists in YAML flow style)."""
        return [f"{k}={self._text(v)}" for k, v in self.settings.items()]

    def describe(self, given: dict[str, str] | None = None) -> list[str]:
        """One line per setting and its reason; with ``given`` (the user's ``key=value``
        overrides), the values that will be used: the user's where given."""
        given = dict(given or {})
        if "train.epochs" in given and "train.time_budget" not in given:
            given["train.time_budget"] = "0"  # a fixed length asked for: no budget
        lines = []
        for k, v in self.settings.items():
            if k in given and str(given[k]) != self._text(v):
                lines.append(f"{k} = {given[k]}  (your setting; the recipe's: {self._text(v)})")
            else:
                lines.append(f"{k} = {self._text(v)}  ({self.reasons[k]})")
        lines += [f"{k} = {v}  (your setting)" for k, v in given.items() if k not in self.settings]
        return lines

    @staticmethod
    def _text(v: Any) -> str:
        return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, list) else str(v)


def typical_size(source: ImageSource, samples: int = 64) -> int:
    """The median shorter side of up to ``samples`` images spread over the source."""
    n = len(source)
    step = max(1, n // samples)
    sides = []
    for i in range(0, n, step):
        try:
            img = load_rgb(source[i][0])
        except Exception:  # unreadable images are the loader's business
            continue
        sides.append(min(img.size))
        if len(sides) >= samples:
            break
    return int(statistics.median(sides)) if sides else 224


def suggest_recipe(
    source: str,
    split: str | None = None,
    gpus: int | None = None,
    size: int | None = None,
    root: str = "~/.cache/swav/datasets",
    download: bool = False,
    budget: str | None = None,
    arch: str | None = None,
    step_timer: StepTimer | None = None,
) -> Recipe:
    """Settings for pretraining on ``source`` (a folder or archive) on this machine.

    ``split``: the sub-folder to train on (default: ``train`` when there is one, else every
    image); ``gpus``: GPUs per node (default: those visible); ``size``: the images' shorter
    side (default: measured on a sample); ``root`` / ``download``: where a torchvision dataset
    is kept and whether it may be downloaded (``data.root`` / ``data.download``); ``budget``:
    the user's ``train.time_budget`` on a CPU ("0": a fixed number of epochs), ``arch``: the
    user's ``model.arch`` (neither: the recipe's choice); ``step_timer``: seconds of a training
    step of a backbone in the recipe's settings (default: ``time_step``)."""
    if split is None:
        split = "train" if _opens(source, "train", root) else ""
    data = open_source(source, split, root, download)
    n = len(data)
    side = size or typical_size(data)
    gpus = torch.cuda.device_count() if gpus is None else gpus
    r = Recipe()
    r.set("data.source", source, "the data given")
    r.set("data.split", split, "the split given" if split else "every image")
    held_out = _held_out_split(source, split, root)
    if held_out:
        r.set("data.eval_split", held_out, "the held-out split found beside it")
    _crops(r, side, gpus)
    large = r.settings["multicrop.sizes"][0]
    if gpus:
        _model(r, n, gpus, large)
        batch = _batch(r, gpus, r.settings["model.arch"], large, n)
    else:
        batch = _batch(r, 0, "", large, n)
        seconds = duration(DEFAULT_CPU_BUDGET if budget is None else budget)
        _cpu_model(r, large, seconds, arch, step_timer or time_step)
    _prototypes_and_queue(r, n, batch * max(1, gpus))
    _schedule(r, batch * max(1, gpus), gpus)
    return r


def _held_out_split(source: str, split: str, root: str) -> str | None:
    """A split beside ``split`` to evaluate on (val, test, ...), if the data has one."""
    if not split:
        return None
    return next(
        (n for n in ("val", "test", "valid", "validation") if _opens(source, n, root)), None
    )


def _opens(source: str, split: str, root: str = "~/.cache/swav/datasets") -> bool:
    """Whether ``source`` has a sub-folder / archive member ``split`` (a folder without it
    would read every image instead)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return (folder / split).is_dir()
    try:
        open_source(source, split, root)
    except DataError:
        return False
    return True


def _crops(r: Recipe, side: int, gpus: int) -> None:
    large = max([s for s in CROP_SIZES if s <= max(side, CROP_SIZES[0]) * 1.2] or [32])
    small = max(16, large // 2 if large < 224 else 96)
    n_small = 6 if gpus else 4
    why = f"images about {side} px on their shorter side"
    if large <= 32 and not gpus:
        # CIFAR-sized images on a CPU: crops at 3/4 of the side, the whole images evaluated
        r.set(
            "multicrop.sizes",
            [24, 12],
            f"{why}, on a CPU: crops at 3/4 of their side cost 0.56x a step, so 1.8x the steps "
            "in the same time",
        )
        r.set(
            "multicrop.eval_size",
            large,
            "whole images evaluated at their size: random-resized crops show objects larger "
            "than the whole image does, so testing above the training size helps (FixRes)",
        )
        r.set(
            "multicrop.jitter", [0.4, 0.4, 0.4, 0.1], "32 px images: colour jitter at half strength"
        )
    else:
        r.set("multicrop.sizes", [large, small], why)
    r.set("multicrop.n_crops", [2, n_small], "2 large + 6 small on GPUs, 2 + 4 on a CPU")
    scale_small = [0.05, 0.14] if large >= 160 else [0.1, 0.3]
    r.set("multicrop.min_scale", [0.14 if large >= 160 else 0.3, scale_small[0]], why)
    r.set("multicrop.max_scale", [1.0, scale_small[1]], why)
    if large <= 64:
        r.set("multicrop.blur_prob", 0.0, "small images: blur erases most of their detail")


def _model(r: Recipe, n: int, gpus: int, large: int) -> None:
    big = n >= 200_000
    r.set("model.arch", "resnet50" if big else "resnet18", f"{n} images on {gpus} GPU(s)")
    r.set("model.small_stem", large <= 40, f"{large} px crops")
    r.set("model.hidden_mlp", 2048, "the paper's projection head")


def _cpu_model(r: Recipe, large: int, seconds: float, arch: str | None, timer: StepTimer) -> None:
    r.set("model.small_stem", large <= 40, f"{large} px crops")
    if arch:
        r.set("model.arch", arch, "as given (model.arch, or the weights model.init names)")
    elif not seconds:
        why = "a fixed number of epochs: the same steps whatever the backbone, so the largest"
        r.set("model.arch", "resnet18", why)
    else:
        r.set("model.arch", *choose_cpu_backbone(lambda a: timer(a, r), seconds))
    r.set("model.hidden_mlp", 2048, "the paper's projection head")


def choose_cpu_backbone(step_seconds: Callable[[str], float], budget: float) -> tuple[str, str]:
    """The largest of ``CPU_BACKBONES`` that makes ``STEPS_WANTED`` steps in ``budget``
    seconds at the pace ``step_seconds(arch)`` measures, else the fastest; and the reason.
    The backbones are timed from the smallest up, until one falls short."""
    times: dict[str, float] = {}
    for a in reversed(CPU_BACKBONES):
        times[a] = step_seconds(a)
        if budget / times[a] < STEPS_WANTED:
            break
    fits = [a for a in CPU_BACKBONES if a in times and budget / times[a] >= STEPS_WANTED]
    paced = ", ".join(f"{a} {t:.2f} s" for a, t in times.items())
    within = f"in {format_duration(budget)} (a step on synthetic crops: {paced})"
    if fits:
        return fits[0], f"the largest backbone that makes {STEPS_WANTED}+ steps {within}"
    fastest = CPU_BACKBONES[-1]
    return fastest, (
        f"none makes {STEPS_WANTED} steps {within}: the fastest (at most "
        f"{int(budget / times[fastest])} steps: decoding the images shares the cores); "
        "a longer train.time_budget affords a larger one"
    )


def time_step(arch: str, r: Recipe, repeats: int = 3) -> float:
    """Seconds of one forward and backward pass of ``arch`` with the recipe's crops, batch,
    head and precision on this machine (synthetic crops; the median of ``repeats`` after one
    untimed)."""
    s = r.settings
    model = build_model(arch, 2048, 32, 100, small_stem=s["model.small_stem"])
    model = model.to(memory_format=torch.channels_last)
    batch = s["train.batch_size"]
    crops = [
        torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        for n, size in zip(s["multicrop.n_crops"], s["multicrop.sizes"])
        for _ in range(n)
    ]
    bf16 = cpu_supports_bf16()
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(crops)
        (out.embeddings.float().square().sum() + out.scores[0].float().sum()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _batch(r: Recipe, gpus: int, arch: str, large: int, n: int) -> int:
    if not gpus:
        precision = "bf16" if cpu_supports_bf16() else "fp32"
        batch, why = 64, f"CPU training ({precision})"
    else:
        batch = 64 if arch == "resnet50" and large >= 160 else 256
        why = f"per GPU, {arch} at {large} px"
    if batch * max(1, gpus) > n // 4:
        batch = max(2, n // (4 * max(1, gpus)))
        why = f"a quarter of the {n} images"
    r.set("train.batch_size", batch, why)
    return batch


def _prototypes_and_queue(r: Recipe, n: int, global_batch: int) -> None:
    if global_batch < 256:
        why = f"a small batch ({global_batch})"
        r.set("model.n_prototypes", [100], why + ": few prototypes, codes sharp enough")
        r.set("swav.queue_length", 0, why + " that covers K = 100")
        r.set("model.output_dim", 32, why + ": 32-d embeddings spread the first scores")
        r.set("swav.temperature", 0.2, why + ": softer predictions in the first steps")
        return
    r.set("model.output_dim", 128, "the paper's embedding size")
    r.set("swav.temperature", 0.1, "the paper's temperature")
    k = int(min(3000, max(100, round(n / 20, -1))))
    queue = 0
    if global_batch < 1.5 * k:
        cap = (n // 4) // global_batch * global_batch
        queue = min(math.ceil((1.5 * k - global_batch) / global_batch) * global_batch, cap)
        if global_batch + queue < 1.5 * k:
            k = max(10, int((global_batch + queue) / 1.5) // 10 * 10)
    r.set("model.n_prototypes", [k], f"about one per 20 of the {n} images, 100 to 3000")
    if queue:
        r.set(
            "swav.queue_length",
            queue,
            f"batch {global_batch} + queue {queue} >= 1.5 K, at most a quarter of the data",
        )
        r.set("swav.epoch_queue_starts", "10%", "after the first, fast-changing tenth of the run")
    else:
        r.set("swav.queue_length", 0, f"the batch of {global_batch} covers K = {k}")


def _schedule(r: Recipe, global_batch: int, gpus: int) -> None:
    r.set("optim.optimizer", "lars", "the reference optimiser")
    if gpus:
        lr = round(0.6 * max(1.0, global_batch / 256), 4)
        why = f"0.6 x batch / 256, at least 0.6 (batch {global_batch})"
    else:
        lr = CPU_BASE_LR
        why = (
            "twice what the GPU rule gives a batch of 64, as a CPU budget buys few steps "
            "(Imagenette at 32 px, 30 minutes: kNN 57.2 against 51.5 at 0.6; 2.4 held kNN at "
            "the random network's level for half the run and ended at 42.6)"
        )
    r.set("optim.base_lr", lr, why)
    r.set("optim.final_lr", round(lr / 1000, 7), "base / 1000 at the end of the cosine")
    r.set("optim.warmup_epochs", "5%", "5 % of the run")
    r.set("optim.start_warmup", 0.0, "warm up from 0")
    r.set(
        "optim.lars_exclude_bias_norm",
        False,
        "LARS on every parameter, as the reference: plain SGD steps on biases and norms let "
        "the embedding's bias run away with a small batch",
    )
    r.set("swav.freeze_prototypes_niters", "2%", "prototypes fixed for the first 2 % of the run")
    if gpus:
        r.set("train.epochs", 200, "a useful length on GPUs")
    else:
        r.set(
            "train.time_budget",
            DEFAULT_CPU_BUDGET,
            "on a CPU the run sets its epochs to end in this time (train.time_budget=2h for "
            "more; train.epochs=N for a fixed length)",
        )
    r.set("train.collapse_patience", "2%", "collapse declared after 2 % of the run")
    r.set("train.on_collapse", "recover", "rewind and adjust if the run collapses")
