import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
torch.set_num_threads(min(2, os.cpu_count() or 1))
# listings are cached per test session, never in the user's cache (processes started by tests
# inherit it; spawned workers that import this module reuse the parent's)
if "swav-test-cache-" not in os.environ.get("SWAV_CACHE_DIR", ""):
    os.environ["SWAV_CACHE_DIR"] = tempfile.mkdtemp(prefix="swav-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SWAV_CACHE_DIR"], ignore_errors=True)


def tiny_overrides(run_dir, **extra) -> list[str]:
    """A configuration that trains in about a second on a CPU."""
    base = {
        "data.source": "digits",
        "data.limit": 128,
        "data.workers": 0,
        "model.arch": "resnet_tiny",
        "model.small_stem": True,
        "model.hidden_mlp": 32,
        "model.output_dim": 16,
        "model.n_prototypes": "[20]",
        "multicrop.n_crops": "[2,2]",
        "multicrop.sizes": "[16,8]",
        "multicrop.min_scale": "[0.5,0.3]",
        "multicrop.max_scale": "[1.0,0.6]",
        "multicrop.blur_prob": 0.5,
        "swav.freeze_prototypes_niters": 2,
        "optim.base_lr": 0.5,
        "optim.final_lr": 0.001,
        "optim.warmup_epochs": 0,
        "train.batch_size": 16,
        "train.iters_per_epoch": 3,
        "train.epochs": 2,
        "train.log_every": 2,
        "train.precision": "fp32",
        "run_dir": str(run_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder tree with 2 classes of 12 small RGB images each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root
