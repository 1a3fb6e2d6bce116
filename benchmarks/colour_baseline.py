"""What a random network's kNN rests on: colour, measured on real photos.

A short SwAV run is judged against the same network randomly initialised (``quality.py``). This
measures, on the same held-out images and kNN bank, three features that use no training:

- ``colour_histogram``: a 4 x 4 x 4 RGB histogram with each channel's mean and spread (70 numbers
  per image, no network at all);
- ``random_network``: the recipe's backbone, randomly initialised (as ``quality.py``);
- ``random_network_grey``: the same network given the images in grey;
- with ``--checkpoint``, a trained backbone in colour and in grey (``trained``, ``trained_grey``).

When the histogram alone comes close to the random network, and the network loses much of its
accuracy in grey, the random baseline is a colour classifier; SwAV's augmentations (colour jitter,
grey crops) teach invariance to exactly that, so a trained network must learn shapes before it
overtakes it.

    python benchmarks/colour_baseline.py --name animals --data /path/to/cifar10-animals \
        --eval-limit 2000 --train-limit 5000

Results go to benchmarks/results/colour_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

from swav.config import build_config  # noqa: E402
from swav.engine.recipe import suggest_recipe  # noqa: E402
from swav.interop.checkpoints import load_checkpoint  # noqa: E402
from swav.model.config import build_from_config  # noqa: E402


class ColourHistogram(nn.Module):
    """Normalised images -> a joint RGB histogram (``bins`` per channel), the channels' means
    and standard deviations."""

    def __init__(self, mean: list[float], std: list[float], bins: int = 4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.bins = bins

    def forward(self, x: Tensor) -> Tensor:
        rgb = (x * self.std + self.mean).clamp(0, 1)
        q = (rgb * self.bins).long().clamp_(max=self.bins - 1)
        cell = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]
        hist = torch.zeros(x.shape[0], self.bins**3)
        hist.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=hist.dtype))
        hist /= cell[0].numel()
        return torch.cat([hist, rgb.mean((2, 3)), rgb.std((2, 3))], 1)


class Grey(nn.Module):
    """A network given its images in grey (the luma of the unnormalised image, normalised
    again)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        rgb = x * self.std + self.mean
        luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return self.net((luma.expand(-1, 3, -1, -1) - self.mean) / self.std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--probe-epochs", type=int, default=30)
    ap.add_argument(
        "--checkpoint", default=None, help="a trained run or checkpoint: also in colour and grey"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    quality.TRAIN_LIMIT = args.train_limit
    arch = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model.arch=")), None)
    recipe = suggest_recipe(args.data, "train", arch=arch or "resnet_tiny").overrides()
    cfg = build_config(None, [*recipe, *args.overrides])
    mc = cfg.multicrop
    torch.manual_seed(cfg.train.seed)
    network = build_from_config(cfg.model).backbone.eval()
    record = {
        "name": args.name,
        "command": "python benchmarks/colour_baseline.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "arch": cfg.model.arch,
        "cpu": quality._cpu(),
    }
    features = {
        "colour_histogram": ColourHistogram(mc.mean, mc.std),
        "random_network": network,
        "random_network_grey": Grey(network, mc.mean, mc.std),
    }
    if args.checkpoint:
        trained = load_checkpoint(args.checkpoint, ignore=("head",)).model.backbone.eval()
        features["trained"] = trained
        features["trained_grey"] = Grey(trained, mc.mean, mc.std)
        record["checkpoint"] = args.checkpoint
    for key, model in features.items():
        record[key] = quality.evaluate(model.eval(), cfg, args.eval_limit, args.probe_epochs)
        print(key, json.dumps(record[key]), flush=True)
    out = quality.HERE / "results" / f"colour_{args.name}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
