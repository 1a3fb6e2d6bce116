"""Pictures: each command writes a valid image of the expected size, the gallery shows the
images its prototype scores highest, and the HTML report links only files that exist and
renders in a real browser with every image loaded."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from swav.cli import main
from swav.config import build_config
from swav.data.sources import digits_source
from swav.engine.train import pretrain
from swav.viz.clusters import export_clusters, prototype_groups
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz") / "run"
    over = {"train.epochs": 2, "data.eval_split": "test", "model.n_prototypes": "[6]"}
    pretrain(build_config(None, tiny_overrides(d, **over)), progress=False)
    return d


def png(path, min_size=(300, 200)):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
        arr = np.asarray(img.convert("L"), dtype=float)
    assert arr.std() > 5, "a blank picture"
    return img.size


def test_curves_of_a_finished_and_of_a_running_run(run_dir, tmp_path, capsys):
    assert main(["viz", "curves", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    w, h = png(tmp_path / "c.png", (900, 700))
    running = tmp_path / "running"
    shutil.copytree(run_dir, running)
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # mid first epoch
    assert main(["viz", "curves", str(running)]) == 0
    png(running / "curves.png", (900, 700))
    (running / "metrics.jsonl").write_text("")
    assert main(["viz", "curves", str(running)]) == 2  # nothing trained yet: an error, no frame
    assert "no training records yet" in capsys.readouterr().err


def test_gallery_shows_the_images_each_prototype_scores_highest(run_dir, tmp_path):
    out = tmp_path / "g.png"
    argv = ["viz", "clusters", "--checkpoint", str(run_dir), "--out", str(out), "--top", "5"]
    assert main([*argv, "--limit", "0", "--no-progress"]) == 0
    png(out, (400, 200))
    png(tmp_path / "g_usage.png")
    listing = json.loads((tmp_path / "g.json").read_text())
    # recompute the scores independently and check every row of the gallery
    from swav.interop.checkpoints import load_checkpoint
    from swav.model.features import extract_features

    loaded = load_checkpoint(run_dir)
    source = digits_source("test")
    f = extract_features(loaded.model, source, loaded.eval_transform(), with_scores=True)
    scores = f.scores.numpy()
    names = source.item_names()
    sizes = np.bincount(scores.argmax(1), minlength=scores.shape[1])
    assert [g["prototype"] for g in listing] == [
        int(p) for p in np.argsort(-sizes, kind="stable") if sizes[p] > 0
    ][: len(listing)]
    for g in listing:
        p = g["prototype"]
        best = np.argsort(-scores[:, p], kind="stable")[:5]
        assert [t["image"] for t in g["top"]] == [names[i] for i in best]
        assert g["size"] == sizes[p]
        assert 0 < g["purity"] <= 1 and g["majority"] in source.classes


def test_gallery_of_chosen_prototypes_and_export(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(30, 5, generator=g)
    source = digits_source("test")
    source = source.subset(range(30))
    groups = prototype_groups(scores, source, top=3, prototypes=[4, 1])
    assert [x.prototype for x in groups] == [4, 1]
    assert groups[0].top == torch.argsort(scores[:, 4], descending=True)[:3].tolist()
    folders = export_clusters(groups, source, tmp_path / "exp")
    for grp, folder in zip(groups, folders):
        assert folder.name == f"prototype_{grp.prototype:04d}"
        files = sorted(folder.iterdir())
        assert len(files) == grp.size == int((scores.argmax(1) == grp.prototype).sum())
        assert all(Image.open(f).format == "PNG" for f in files)
    with pytest.raises(Exception, match="do not exist"):
        prototype_groups(scores, source, prototypes=[9])


def test_export_links_the_files_of_a_folder(tmp_path, image_folder):
    from swav.data.sources import folder_source

    source = folder_source(image_folder)
    scores = torch.zeros(len(source), 2)
    scores[: len(source) // 2, 0] = 1
    scores[len(source) // 2 :, 1] = 1
    groups = prototype_groups(scores, source, top=2)
    export_clusters(groups, source, tmp_path / "links")
    linked = sorted((tmp_path / "links" / "prototype_0000").iterdir())
    assert len(linked) == len(source) // 2 and all(p.is_symlink() for p in linked)
    assert all(p.resolve().is_file() for p in linked)


def test_neighbours_find_the_query_itself_first(run_dir, tmp_path, capsys):
    source = digits_source("test")
    arr = source[7][0]
    query = tmp_path / "q.png"
    Image.fromarray(arr).save(query)
    out = tmp_path / "n.png"
    argv = ["viz", "neighbours", str(query), "--checkpoint", str(run_dir), "--limit", "0"]
    assert main([*argv, "--out", str(out), "--k", "4", "--no-progress"]) == 0
    png(out, (300, 80))
    row = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    first, sim = row[1].rsplit(" ", 1)
    assert first == source.item_names()[7] and float(sim) > 0.999


@pytest.mark.parametrize("thumbs", [False, True])
def test_embedding_map(run_dir, tmp_path, thumbs):
    out = tmp_path / "e.png"
    argv = ["viz", "embedding", "--checkpoint", str(run_dir), "--out", str(out), "--limit", "200"]
    assert main([*argv, *(["--thumbnails"] if thumbs else []), "--no-progress"]) == 0
    png(out, (500, 400))


def test_html_report_links_only_files_that_exist(run_dir, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    (run / "loss.png").unlink()  # a file the report must not link any more
    assert main(["report", str(run), "--html", "--no-progress"]) == 0
    page = (run / "report.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs and all((run / h).exists() for h in hrefs)
    assert "loss.png" not in hrefs
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_html_report_renders_in_a_browser(run_dir, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    assert main(["report", str(run), "--html", "--no-progress"]) == 0
    url = (run / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    png(shot, (1200, 2400))
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run"
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= 4 and loaded == total  # every image has naturalWidth > 0


def test_demo_ends_with_the_html_report_and_a_rerun_changes_nothing(tmp_path, capsys):
    run = tmp_path / "demo"
    over = [o for o in tiny_overrides(run, **{"train.epochs": 1}) if not o.startswith("run_dir")]
    over = [o for o in over if not o.startswith("data.limit")]  # the demo's held-out digits
    assert main(["demo", "--run-dir", str(run), "--no-progress", *over]) == 0
    out = capsys.readouterr().out
    page = run / "report.html"
    assert f"a map of the features: {page}" in out and page.exists()
    before = (page.stat().st_mtime_ns, (run / "demo_results.json").read_bytes())
    assert main(["demo", "--run-dir", str(run), "--no-progress", *over]) == 0
    assert "holds a finished demo; nothing changed" in capsys.readouterr().out
    assert (page.stat().st_mtime_ns, (run / "demo_results.json").read_bytes()) == before
