import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from swav.data.images import DataError, load_rgb
from swav.data.multicrop import MultiCrop
from swav.data.sources import digits_source, open_source
from tests.conftest import SHARED


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if img.mode != "CMYK" else "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8))
    if mode == "I;16":
        arr = (np.arange(120).reshape(10, 12) * 500).astype(np.uint16)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    out = load_rgb(_png(img))
    assert out.mode == "RGB" and out.size == (12, 10)
    if mode == "I;16":
        a = np.asarray(out)[..., 0].astype(int)
        # rescaled from 16 bits, not clipped: the brightest pixel is not saturated at pixel 1
        assert a.max() == round(119 * 500 / 65535 * 255) and a[0, 1] < a[5, 5] < a.max()


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_rgb(_png(img))).min() == 255


def test_tiny_image_is_upscaled_by_the_crop():
    crops = MultiCrop(n_crops=[1], sizes=[32], min_scale=[0.5], max_scale=[1.0])(
        load_rgb(_png(Image.new("RGB", (3, 3), (9, 9, 9))))
    )
    assert crops[0].shape == (3, 32, 32)


def test_folder_with_classes(image_folder):
    src = open_source(str(image_folder), split="")
    assert len(src) == 24 and src.classes == ["cats", "dogs"] and src.labelled
    assert sorted(set(src.labels)) == [0, 1]


def test_folder_without_classes_any_depth(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(tmp_path / "x.jpg")
    Image.new("RGB", (5, 5)).save(tmp_path / "a" / "b" / "y.png")
    src = open_source(str(tmp_path), split="")
    assert len(src) == 2 and not src.labelled and set(src.labels) == {-1}


def test_missing_empty_and_non_image_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found under .*empty"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="docs"):
        open_source(str(tmp_path / "docs"))
    (tmp_path / "file.csv").write_text("a,b")
    with pytest.raises(DataError, match="file.csv"):
        open_source(str(tmp_path / "file.csv"))
    bad_tar = tmp_path / "bad.tar"
    bad_tar.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="bad.tar"):
        open_source(str(bad_tar))


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_archive_in_place(tmp_path, suffix, mode):
    path = tmp_path / f"imgs{suffix}"
    with tarfile.open(path, mode) as tf:
        for split in ("train", "val"):
            for c in ("a", "b"):
                for i in range(3):
                    data = _png(Image.new("RGB", (6, 6), (i * 40, 0, 0)))
                    info = tarfile.TarInfo(f"root/{split}/{c}/{i}.png")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    src = open_source(str(path), split="train")
    assert len(src) == 6 and src.classes == ["a", "b"]
    img = load_rgb(src[4][0])
    assert img.size == (6, 6) and src[4][1] == 1
    assert len(open_source(str(path), split="")) == 12
    with pytest.raises(DataError, match="split 'test'"):
        open_source(str(path), split="test")


def test_digits_offline_split():
    tr, te = digits_source("train"), digits_source("test")
    assert len(tr) + len(te) == 1797 and len(te) == 360
    assert np.bincount(te.labels).min() >= 35  # stratified
    assert load_rgb(tr[0][0]).size == (8, 8)


@pytest.mark.skipif(not (SHARED / "cifar10-jpg.tar.gz").exists(), reason="shared data missing")
def test_shared_cifar_archive():
    src = open_source(str(SHARED / "cifar10-jpg.tar.gz"), split="test")
    assert len(src) == 10000 and len(src.classes) == 10
    assert load_rgb(src[0][0]).size == (32, 32)
    assert torch.bincount(torch.tensor(src.labels)).tolist() == [1000] * 10
