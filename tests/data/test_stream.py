"""Streaming shards: read in order from paths, file: URLs and pipe: commands, split over
processes and loader workers in whole batches, each sample once per epoch when the shards
divide evenly, resumed at the same sample, a broken shard skipped."""

import logging
from collections import Counter

import pytest
import torch

from swav.config import build_config
from swav.data.images import DataError
from swav.data.multicrop import MultiCrop, MultiCropConfig
from swav.data.settings import is_stream
from swav.data.shards import pack_shards
from swav.data.sources import digits_source
from swav.data.stream import (
    StreamDataset,
    expand_braces,
    make_stream_loader,
    shard_samples,
    stream_shards,
)
from swav.engine.train import pretrain
from swav.errors import ConfigError
from tests.conftest import tiny_overrides

CFG = MultiCropConfig(n_crops=[1], sizes=[8], min_scale=[0.5], max_scale=[1.0])


@pytest.fixture
def shards(tmp_path):
    """8 shards of 40 digits each (320 samples), as `swav shards` writes them."""
    source = digits_source("train").subset(range(320))
    pack_shards(source, tmp_path / "s", shard_size=40, seed=None)
    return tmp_path / "s", source


def test_brace_lists_and_schemes():
    assert expand_braces("a-{00..02}.tar") == ["a-00.tar", "a-01.tar", "a-02.tar"]
    assert expand_braces("x{1..2}-{08..09}") == ["x1-08", "x1-09", "x2-08", "x2-09"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert is_stream("pipe:cat x.tar") and is_stream("https://h/x.tar")
    assert not is_stream("/data/x.tar") and not is_stream("digits")
    with pytest.raises(DataError, match="runs backwards"):
        expand_braces("a-{3..1}.tar")
    with pytest.raises(DataError, match="shards not found"):
        stream_shards("file:/nowhere/shard-{0..1}.tar")


def test_a_shard_streams_through_a_pipe_as_it_was_packed(shards):
    folder, source = shards
    direct = list(shard_samples(str(folder / "shard-000001.tar")))
    piped = list(shard_samples(f"pipe:cat {folder}/shard-000001.tar"))
    assert direct == piped and len(direct) == 40
    for k, (key, image, label) in enumerate(direct):
        item, expected = source[40 + k]
        assert key == f"{40 + k:09d}" and label == expected and image[:4] == b"\x89PNG"
    urls = stream_shards(f"pipe:cat {folder}/shard-{{000000..000007}}.tar")
    assert len(urls) == 8 and urls[3] == f"pipe:cat {folder}/shard-000003.tar"


def read_epoch(folder, epoch, world=2, workers=2, batch=8, samples=320, start=0, buffer=16):
    """Labels and keys of one epoch, as each rank's loader yields them, in batches."""
    per_rank = []
    for rank in range(world):
        ds = StreamDataset(
            stream_shards(f"file:{folder}/shard-{{000000..000007}}.tar"),
            MultiCrop(CFG),
            batch,
            samples,
            seed=1,
            rank=rank,
            world_size=world,
            shuffle_buffer=buffer,
        )
        ds.set_epoch(epoch, start_batch=start)
        batches = []
        for crops, _labels, _, bad in make_stream_loader(ds, batch, workers):
            assert not bad and crops[0].shape == (batch, 3, 8, 8)
            batches.append(crops[0])
        per_rank.append(batches)
    return per_rank


def test_each_sample_once_per_epoch_over_two_processes_and_two_workers(shards):
    folder, _ = shards
    for epoch in (0, 1):
        per_rank = read_epoch(folder, epoch)
        assert [len(b) for b in per_rank] == [20, 20]  # 320 / (2 x 8), the same on each rank
        # what each (process, worker) slot reads for its 10 batches of 8
        ds = StreamDataset(stream_shards(f"{folder}/shard-{{000000..000007}}.tar"), None, 8, 320)
        ds.set_epoch(epoch)
        counts = Counter()
        for slot in range(4):
            samples = ds._samples(slot, 4)
            counts.update(next(samples)[0] for _ in range(80))
        assert len(counts) == 320 and set(counts.values()) == {1}


def test_epochs_differ_and_a_resumed_epoch_continues_at_the_same_batch(shards):
    folder, _ = shards
    full = read_epoch(folder, 0)
    again = read_epoch(folder, 0)
    other = read_epoch(folder, 1)
    assert all(torch.equal(a, b) for a, b in zip(full[0], again[0]))
    assert not all(torch.equal(a, b) for a, b in zip(full[0], other[0]))
    resumed = read_epoch(folder, 0, start=7)
    assert [len(b) for b in resumed] == [13, 13]
    for rank in range(2):
        assert all(torch.equal(a, b) for a, b in zip(full[rank][7:], resumed[rank]))


def test_the_shuffle_buffer_mixes_within_a_slot(shards):
    folder, _ = shards
    ds = StreamDataset(
        stream_shards(f"{folder}/shard-{{000000..000007}}.tar"),
        MultiCrop(CFG),
        8,
        320,
        shuffle_buffer=1,
    )
    ordered = [next(it)[0] for it in [ds._samples(0, 1)] for _ in range(320)]
    assert ordered == sorted(ordered) or len(set(ordered)) == 320
    mixed = StreamDataset(ds.shards, MultiCrop(CFG), 8, 320, shuffle_buffer=64)
    it = mixed._samples(0, 1)
    keys = [next(it)[0] for _ in range(320)]
    assert sorted(keys) == sorted(ordered) and keys != ordered


def test_a_broken_shard_is_skipped_and_every_rank_still_gets_its_batches(shards, caplog):
    folder, _ = shards
    (folder / "shard-000002.tar").write_bytes(b"not a tar at all" * 100)
    ds = StreamDataset(
        stream_shards(f"pipe:cat {folder}/shard-{{000000..000007}}.tar"), MultiCrop(CFG), 8, 320
    )
    with caplog.at_level(logging.WARNING):
        batches = list(make_stream_loader(ds, 8, 0))
    assert len(batches) == 40 and all(b[0][0].shape[0] == 8 for b in batches)
    assert "shard-000002.tar could not be read" in caplog.text
    dead = StreamDataset(["pipe:exit 3"], MultiCrop(CFG), 8, 32)
    with pytest.raises(DataError, match="no sample could be read"):
        list(make_stream_loader(dead, 8, 0))


def test_pretraining_on_a_stream_and_refusals(shards, tmp_path):
    folder, _ = shards
    src = f"pipe:cat {folder}/shard-{{000000..000007}}.tar"
    over = {"data.source": src, "data.samples_per_epoch": 320, "train.epochs": 2}
    over["train.iters_per_epoch"] = 0
    r = pretrain(build_config(None, tiny_overrides(tmp_path / "run", **over)), progress=False)
    assert r.epochs_done == 2 and r.iterations == 2 * (320 // 16)
    bad = {**over, "data.samples_per_epoch": 0}
    with pytest.raises(ConfigError, match="data.samples_per_epoch: a streaming source"):
        pretrain(build_config(None, tiny_overrides(tmp_path / "r2", **bad)), progress=False)
    dc = {**over, "method": "deepclusterv2"}
    with pytest.raises(ConfigError, match="memory bank"):
        pretrain(build_config(None, tiny_overrides(tmp_path / "r3", **dc)), progress=False)
