"""The data side of a training process: its source (listed, or streamed), its sampler, the
multi-crop transform and the loader, with the process's cores shared between the loader
workers and the computation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from swav.config import Config, check_dataset_size
from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
from swav.data.multicrop import MultiCrop
from swav.data.settings import is_stream
from swav.data.sources import training_source
from swav.data.stream import StreamDataset, make_stream_loader, stream_shards
from swav.engine.distributed import DistInfo
from swav.engine.runtime import ThreadBudget, thread_budget
from swav.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    size: int
    """Images in the data (for a stream: samples in an epoch)."""
    sampler: EpochSampler | StreamDataset
    """This process's share of each epoch, in global batches (a stream is its own sampler)."""
    transform: MultiCrop
    loader: DataLoader
    cores: ThreadBudget
    """How the process's cores are shared between intra-op threads and loader workers."""


def build_data(cfg: Config, info: DistInfo, device: torch.device) -> TrainData:
    """Opens the training data (checking the batch against its size), and sizes the
    intra-op threads and loader workers together to this process's cores."""
    budget = thread_budget(cfg.train.threads, cfg.data.workers, device, info.local_world_size)
    torch.set_num_threads(budget.threads)
    if info.is_main:
        log.info("cores: %s", budget.describe())
    transform = MultiCrop(cfg.multicrop)
    bs, seed, uint8 = cfg.train.batch_size, cfg.train.seed, cfg.data.transfer == "uint8"
    pin = device.type == "cuda"
    if is_stream(cfg.data.source):
        stream = StreamDataset(
            stream_shards(cfg.data.source),
            transform,
            bs,
            cfg.data.samples_per_epoch,
            seed=seed,
            rank=info.rank,
            world_size=info.world_size,
            shuffle_buffer=cfg.data.shuffle_buffer,
            as_uint8=uint8,
            max_batches=cfg.train.iters_per_epoch,
        )
        loader = make_stream_loader(stream, bs, budget.workers, pin)
        return TrainData(cfg.data.samples_per_epoch, stream, transform, loader, budget)
    source = training_source(cfg.data, seed)
    check_dataset_size(cfg, info.world_size, len(source))
    sampler = EpochSampler(
        len(source), bs, seed, info.rank, info.world_size, cfg.train.iters_per_epoch
    )
    if sampler.batches < 1:
        raise ConfigError(
            f"train.batch_size: {len(source)} images give no full global batch of "
            f"{cfg.train.global_batch_of(info.world_size)}"
        )
    on_gpu = cfg.multicrop.on_device and device.type == "cuda"  # JPEGs decoded by nvJPEG
    dataset = MultiCropDataset(source, transform, cfg.multicrop.on_device, uint8, on_gpu)
    loader = make_loader(dataset, sampler, bs, budget.workers, pin)
    return TrainData(len(source), sampler, transform, loader, budget)
