"""Tar shards: packed from any source and read back image for image, opened by index, glob or
brace list, and read once per epoch over 2 processes x 2 loader workers."""

import tarfile

import numpy as np
import pytest

from swav.cli import main
from swav.config import build_config
from swav.data.images import DataError, load_rgb
from swav.data.loader import EpochSampler, MultiCropDataset, make_loader
from swav.data.multicrop import MultiCrop, MultiCropConfig
from swav.data.shards import pack_shards
from swav.data.sources import digits_source, folder_source, open_source
from swav.engine.train import pretrain
from tests.conftest import tiny_overrides


def test_a_folder_round_trips_byte_for_byte(image_folder, tmp_path):
    src = folder_source(image_folder)
    pack_shards(src, tmp_path / "out", shard_size=5, seed=None)  # in listing order
    back = open_source(str(tmp_path / "out"))
    assert len(back) == len(src) == 24 and back.classes == src.classes == ["cats", "dogs"]
    assert back.labels == src.labels
    for i in range(len(src)):
        assert back[i][0] == open(src.items[i], "rb").read()  # the original encoded bytes
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 5
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tf:  # WebDataset's layout
        names = tf.getnames()
    assert names[:2] == ["000000000.png", "000000000.cls"]


def test_shards_open_by_index_glob_or_brace_list(tmp_path):
    digits = digits_source("test")
    pack_shards(digits, tmp_path / "d", shard_size=100, seed=None)
    for spec in ("d", "d/shard-*.tar", "d/shard-{000000..000003}.tar"):
        s = open_source(str(tmp_path / spec))
        assert len(s) == 360 and s.labels == digits.labels, spec
        for i in (0, 123, 359):
            a, b = np.asarray(load_rgb(s[i][0])), np.asarray(load_rgb(digits[i][0]))
            assert np.array_equal(a, b)
    with pytest.raises(DataError, match="shards not found"):
        open_source(str(tmp_path / "d/shard-{000000..000009}.tar"))


def test_each_image_once_per_epoch_over_two_processes_and_two_workers(tmp_path):
    pack_shards(digits_source("train"), tmp_path / "d", shard_size=300)
    src = open_source(str(tmp_path / "d"))
    cfg = MultiCropConfig(n_crops=[2], sizes=[8], min_scale=[0.5], max_scale=[1.0])
    seen = []
    for rank in range(2):
        sampler = EpochSampler(len(src), 16, seed=3, rank=rank, world_size=2)
        sampler.set_epoch(1)
        loader = make_loader(MultiCropDataset(src, MultiCrop(cfg)), sampler, 16, workers=2)
        for _, _, indices, _ in loader:
            seen += indices.tolist()
    whole = (len(src) // 32) * 32
    assert len(seen) == len(set(seen)) == whole


def test_training_on_shards_and_refusals(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["shards", "digits", str(out), "--split", "train", "--shard-size", "500"]) == 0
    assert "1437 images in 3 shards, shuffled with seed 0" in capsys.readouterr().out
    assert main(["shards", "digits", str(out)]) == 2  # never over an existing shard set
    assert "already holds a shard set" in capsys.readouterr().err
    assert main(["shards", "digits", str(tmp_path / "t"), "--shard-size", "0"]) == 2
    over = {"data.source": str(out), "train.epochs": 1}
    r = pretrain(build_config(None, tiny_overrides(tmp_path / "run", **over)), progress=False)
    assert r.epochs_done == 1


def test_shards_are_packed_shuffled_so_a_streamed_batch_holds_many_classes(image_folder, tmp_path):
    """A listing is ordered by class; a stream reads shard after shard. Packed in listing
    order, the first shard of the 2-class folder would hold one class; shuffled (seeded), both,
    and every image once."""
    src = folder_source(image_folder)
    pack_shards(src, tmp_path / "in_order", shard_size=8, seed=None)
    pack_shards(src, tmp_path / "shuffled", shard_size=8, seed=0)
    pack_shards(src, tmp_path / "again", shard_size=8, seed=0)
    ordered, shuffled = (
        open_source(str(tmp_path / "in_order")),
        open_source(str(tmp_path / "shuffled")),
    )
    assert set(ordered.labels[:8]) == {0}
    assert set(shuffled.labels[:8]) == {0, 1}
    assert sorted(shuffled.item_names()) == sorted(src.item_names())  # each image once
    assert open_source(str(tmp_path / "again")).item_names() == shuffled.item_names()  # seeded
    for i in range(len(shuffled)):  # each image with its own label and bytes
        j = list(src.item_names()).index(shuffled.item_names()[i])
        assert shuffled.labels[i] == src.labels[j]
        assert shuffled[i][0] == open(src.items[j], "rb").read()


def test_a_truncated_shard_is_refused_at_open(tmp_path):
    pack_shards(digits_source("test"), tmp_path / "d", shard_size=100)
    shard = tmp_path / "d" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])  # a copy cut short
    with pytest.raises(DataError, match="shard-000001.tar is truncated .* pack it again"):
        open_source(str(tmp_path / "d"))  # by its index
    with pytest.raises(DataError, match="shard-000001.tar is damaged"):
        open_source(str(tmp_path / "d" / "shard-*.tar"))  # by glob: read to the cut
    shard.unlink()
    with pytest.raises(DataError, match="shard-000001.tar is missing"):
        open_source(str(tmp_path / "d"))
