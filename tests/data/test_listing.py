"""Listings of folders and archives: made once, shared, invalidated when the data changes, and
equal to a fresh listing."""

import tarfile
import threading
import time

import pytest

import swav.data.sources as sources
from swav.data.listing import ArchiveMembers, PackedStrings, cache_root
from swav.data.sources import DataError, folder_source, tar_source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "listings"


@pytest.fixture
def count_listings(monkeypatch):
    """How many times a folder or an archive was actually listed."""
    calls = {"folder": 0, "archive": 0}
    folder, archive = sources._list_folder, sources._list_archive

    def list_folder(root):
        calls["folder"] += 1
        time.sleep(0.05)  # long enough for processes starting together to overlap
        return folder(root)

    def list_archive(path, split):
        calls["archive"] += 1
        return archive(path, split)

    monkeypatch.setattr(sources, "_list_folder", list_folder)
    monkeypatch.setattr(sources, "_list_archive", list_archive)
    return calls


def same_source(a, b):
    assert len(a) == len(b) and a.classes == b.classes and list(a.labels) == list(b.labels)
    assert list(a.item_names()) == list(b.item_names())
    assert all(a[i] == b[i] for i in range(len(a)))


def test_a_folder_is_listed_once_and_equals_a_fresh_listing(
    image_folder, cache, count_listings, monkeypatch
):
    first = folder_source(image_folder)
    second = folder_source(image_folder)
    assert count_listings["folder"] == 1 and cache_root() == cache
    assert isinstance(second.items, PackedStrings)  # no Python object per image
    assert second.items[3] == str(image_folder / "cats" / "11.png")  # sorted as strings
    monkeypatch.setenv("SWAV_CACHE_DIR", "off")
    fresh = folder_source(image_folder)
    assert cache_root() is None and not isinstance(fresh.items, PackedStrings)
    same_source(first, fresh)
    same_source(second, fresh)


def test_a_change_anywhere_in_the_tree_lists_the_folder_again(image_folder, cache, count_listings):
    (image_folder / "dogs" / "deep" / "er").mkdir(parents=True)
    assert len(folder_source(image_folder)) == 24
    (image_folder / "dogs" / "5.png").rename(image_folder / "dogs" / "deep" / "er" / "5.png")
    moved = folder_source(image_folder)
    assert count_listings["folder"] == 2 and len(moved) == 24
    assert "dogs/deep/er/5.png" in list(moved.item_names())
    (image_folder / "dogs" / "deep" / "er" / "5.png").unlink()
    assert len(folder_source(image_folder)) == 23 and count_listings["folder"] == 3
    (image_folder / "birds").mkdir()
    (image_folder / "cats" / "0.png").rename(image_folder / "birds" / "0.png")
    grown = folder_source(image_folder)
    assert grown.classes == ["birds", "cats", "dogs"] and count_listings["folder"] == 4
    assert len(folder_source(image_folder)) == 23 and count_listings["folder"] == 4


def test_processes_starting_together_wait_for_one_listing(image_folder, cache, count_listings):
    got = []
    threads = [
        threading.Thread(target=lambda: got.append(folder_source(image_folder))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count_listings["folder"] == 1 and len(got) == 4
    for s in got[1:]:
        same_source(s, got[0])


def make_archive(image_folder, path, mode):
    with tarfile.open(path, mode) as tf:
        tf.add(image_folder, arcname="data/train")
    return path


def test_a_compressed_archive_is_decompressed_once_and_read_by_offset(
    image_folder, tmp_path, cache, count_listings, monkeypatch
):
    archive = make_archive(image_folder, tmp_path / "data.tar.gz", "w:gz")
    first = tar_source(archive, "train")
    again = tar_source(archive, "train")
    assert count_listings["archive"] == 1
    assert isinstance(again.items, ArchiveMembers)
    assert len(list(cache.glob("*.tar"))) == 1  # the decompressed copy, made once
    assert str(cache) in again.items[0][0]
    monkeypatch.setenv("SWAV_CACHE_DIR", "off")
    in_memory = tar_source(archive, "train")
    assert isinstance(in_memory.items[0], bytes)
    same_source(first, in_memory)
    same_source(again, in_memory)
    assert first.classes == ["cats", "dogs"] and len(first) == 24


def test_a_rewritten_archive_is_listed_again(image_folder, tmp_path, cache, count_listings):
    archive = make_archive(image_folder, tmp_path / "data.tar", "w")
    assert len(tar_source(archive, "train")) == 24
    (image_folder / "cats" / "0.png").unlink()
    time.sleep(0.01)
    make_archive(image_folder, archive, "w")
    assert len(tar_source(archive, "train")) == 23 and count_listings["archive"] == 2


def test_a_damaged_archive_is_refused_and_not_cached(image_folder, tmp_path, cache):
    good = make_archive(image_folder, tmp_path / "good.tar.gz", "w:gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    for _ in range(2):  # and the second time too: nothing half-made was kept
        with pytest.raises(DataError, match="damaged"):
            tar_source(cut, "train")
    assert not list(cache.glob("*.tar")) and not list(cache.glob("*.tmp*"))
