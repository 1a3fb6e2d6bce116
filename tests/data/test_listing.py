"""Listings of folders and archives: made once, shared, invalidated when the data changes, and
equal to a fresh listing."""

import os
import shutil
import tarfile
import threading
import time

import pytest

import swav.data.sources as sources
from swav.data.images import DataError
from swav.data.listing import ArchiveMembers, PackedStrings, cache_root
from swav.data.sources import folder_source, tar_source


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


def test_the_cache_says_what_each_entry_is_and_prunes_only_the_stale(
    image_folder, tmp_path, cache, caplog
):
    from swav.data.listing import cache_entries, remove_cache_entries

    archive = make_archive(image_folder, tmp_path / "data.tar.gz", "w:gz")
    tar_source(archive, "train")
    folder_source(image_folder)
    entries = {e.kind: e for e in cache_entries()}
    assert set(entries) == {"decompressed archive", "archive listing", "folder listing"}
    assert entries["archive listing"].source == str(archive.resolve())
    assert entries["archive listing"].split == "train"
    assert entries["decompressed archive"].source == str(archive.resolve())
    assert entries["folder listing"].source == str(image_folder.resolve())
    copy = entries["decompressed archive"].path
    assert entries["decompressed archive"].size == copy.stat().st_size > 0
    assert not any(e.stale for e in entries.values())

    (image_folder / "cats" / "0.png").unlink()  # the archive is rewritten: a new copy
    time.sleep(0.01)
    make_archive(image_folder, archive, "w:gz")
    with caplog.at_level("WARNING"):
        assert len(tar_source(archive, "train")) == 23
    assert "swav cache --prune" in caplog.text and copy.name in caplog.text
    stale = [e for e in cache_entries() if e.stale]
    assert {e.kind for e in stale} == {"decompressed archive", "archive listing"}
    assert all(e.stale == "its archive has changed since" for e in stale)
    assert copy in {e.path for e in stale}

    freed = remove_cache_entries(stale)
    assert freed == sum(e.size for e in stale) and not copy.exists()
    assert not copy.with_suffix(".json").exists()
    left = cache_entries()
    assert len(left) == 3 and not any(e.stale for e in left)
    again = tar_source(archive, "train")  # still read from the cache, by offset
    assert isinstance(again.items, ArchiveMembers) and len(again) == 23

    shutil.rmtree(image_folder)  # the folder is gone: its listing is stale
    (e,) = [e for e in cache_entries() if e.stale]
    assert e.kind == "folder listing" and e.stale == "its source is gone"


def test_entries_from_older_versions_and_half_written_ones_are_stale(tmp_path, cache):
    from swav.data.listing import UNFINISHED_AFTER_S, cache_entries

    cache.mkdir(parents=True)
    (cache / "0123abcd.tar").write_bytes(b"\0" * 1024)  # a copy without a note of its source
    half = cache / "4567abcd.tar.tmp999"
    half.write_bytes(b"\0" * 10)
    fresh = cache / "89abcdef.tar.tmp998"  # another process is writing it now
    fresh.write_bytes(b"\0" * 10)
    old = time.time() - UNFINISHED_AFTER_S - 60
    os.utime(half, (old, old))
    got = {e.path.name: e for e in cache_entries()}
    assert got["0123abcd.tar"].stale.startswith("made by an older version")
    assert got["4567abcd.tar.tmp999"].stale == "a stopped process left it half-written"
    assert got["89abcdef.tar.tmp998"].stale == ""


def test_swav_cache_lists_prunes_and_clears(image_folder, tmp_path, cache, capsys, monkeypatch):
    from swav.cli import main

    archive = make_archive(image_folder, tmp_path / "data.tar.gz", "w:gz")
    tar_source(archive, "train")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{archive.resolve()} [train]  (current)" in out and "2 entries" in out
    archive.unlink()
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "(stale: its source is gone)" in out and "2 stale" in out
    assert main(["cache", "--prune"]) == 0
    assert "2 stale entries removed" in capsys.readouterr().out
    assert [p for p in cache.iterdir() if p.suffix != ".lock"] == []
    tar_source(make_archive(image_folder, archive, "w:gz"), "train")
    assert main(["cache", "--clear"]) == 0
    assert "removed everything" in capsys.readouterr().out and list(cache.iterdir()) == []
    monkeypatch.setenv("SWAV_CACHE_DIR", "off")
    assert main(["cache"]) == 0
    assert "the listing cache is off" in capsys.readouterr().out


def test_swav_cache_names_the_default_datasets_folder():
    from swav.cli.cache import DATASETS
    from swav.config import DataConfig

    assert DataConfig().root == DATASETS


def test_swav_cache_prune_while_another_process_writes_the_cache(
    image_folder, tmp_path, cache, capsys, monkeypatch
):
    """A running job renames its half-written entries into place and removes stale copies
    while `swav cache --prune` walks the cache: entries that vanish mid-walk are passed over,
    never a traceback."""
    import swav.data.listing as listing
    from swav.cli import main

    folder_source(image_folder)  # one current listing
    (cache / "abc.tmp123").mkdir()  # a listing being written by another process
    (cache / "abc.tmp123" / "names.npy").write_bytes(b"x" * 100)
    real = listing.tree_size

    def renamed_meanwhile(path):
        if ".tmp" in path.name:  # the writer finishes and renames it away
            shutil.rmtree(path)
            return real(path)
        return real(path)

    monkeypatch.setattr(listing, "tree_size", renamed_meanwhile)
    assert main(["cache", "--prune"]) == 0
    out = capsys.readouterr().out
    assert "0 stale entries removed" in out and "1 current kept" in out
