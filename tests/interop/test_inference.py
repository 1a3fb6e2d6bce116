import numpy as np
import pytest
import torch
from PIL import Image

from swav.cli import main
from swav.config import build_config
from swav.engine.train import pretrain
from swav.eval.knn import knn_accuracy
from tests.conftest import SHARED, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inf") / "run"
    pretrain(build_config(None, tiny_overrides(d, **{"train.epochs": 1})), progress=False)
    return d


@pytest.mark.skipif(not (SHARED / "imagenette-96.tar.gz").exists(), reason="no shared data")
def test_embed_knn_equals_eval_knn(run_dir, tmp_path, capsys):
    data = str(SHARED / "imagenette-96.tar.gz")
    for split in ("train", "val"):
        assert (
            main(
                [
                    "embed",
                    data,
                    "--split",
                    split,
                    "--checkpoint",
                    str(run_dir),
                    "--out",
                    str(tmp_path / f"{split}.npy"),
                    "--no-progress",
                ]
            )
            == 0
        )
    names = (tmp_path / "train.names.txt").read_text().split()
    assert len(names) == 9469 and names == sorted(names)
    ftr, fte = np.load(tmp_path / "train.npy"), np.load(tmp_path / "val.npy")
    assert fte.shape[0] == 3925

    def labels(names):
        wnids = sorted({n.split("/")[-2] for n in names})
        return torch.tensor([wnids.index(n.split("/")[-2]) for n in names])

    vnames = (tmp_path / "val.names.txt").read_text().split()
    mine = knn_accuracy(
        torch.from_numpy(ftr), labels(names), torch.from_numpy(fte), labels(vnames), ks=(20,)
    )[20]["top1"]
    out = tmp_path / "knn.json"
    assert (
        main(
            [
                "eval",
                "knn",
                "--checkpoint",
                str(run_dir),
                "--data",
                data,
                "--train-split",
                "train",
                "--test-split",
                "val",
                "--k",
                "20",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    import json

    assert json.loads(out.read_text())["results"]["k=20"]["top1"] == pytest.approx(mine)


def test_embed_parquet_and_predict_assign(run_dir, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(imgs / f"{i}.png")
    assert (
        main(
            [
                "embed",
                str(imgs),
                "--checkpoint",
                str(run_dir),
                "--out",
                str(tmp_path / "f.parquet"),
                "--no-progress",
            ]
        )
        == 0
    )
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "f.parquet")
    assert t.column("name").to_pylist() == ["0.png", "1.png", "2.png"]
    capsys.readouterr()
    paths = [str(imgs / f"{i}.png") for i in range(3)]
    assert main(["assign", *paths, "--checkpoint", str(run_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("prototype" in ln for ln in lines)


def test_predict_with_torchvision_classifier(tmp_path, capsys):
    import torchvision

    tv = torchvision.models.resnet18(num_classes=3)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(img)
    (tmp_path / "classes.txt").write_text("cat\ndog\nfrog\n")
    assert (
        main(
            [
                "predict",
                str(img),
                "--checkpoint",
                str(tmp_path / "tv.pth"),
                "--classes",
                str(tmp_path / "classes.txt"),
                "--size",
                "32",
                "--topk",
                "2",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(img)) and sum(c in line for c in ("cat", "dog", "frog")) == 2


def test_outputs_are_never_overwritten_without_force(tmp_path, capsys):
    from safetensors.torch import load_file

    from swav.cli import main
    from swav.config import build_config
    from swav.engine.train import pretrain
    from tests.conftest import tiny_overrides

    run = tmp_path / "run"
    pretrain(build_config(None, tiny_overrides(run, **{"train.epochs": 1})), progress=False)
    before = (run / "checkpoint.pt").read_bytes()
    export = ["export", "--checkpoint", str(run), "--format", "safetensors"]
    # a run's own checkpoint: never, even with --force
    for extra in ([], ["--force"]):
        assert main([*export, "--out", str(run / "checkpoint.pt"), *extra]) == 2
        assert "run's own file" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    out = tmp_path / "rn.safetensors"
    assert main([*export, "--out", str(out)]) == 0
    first = {k: v.clone() for k, v in load_file(str(out)).items()}  # not a map of the file
    out.write_bytes(b"changed")
    assert main([*export, "--out", str(out)]) == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"changed"  # not replaced
    assert main([*export, "--out", str(out), "--force"]) == 0
    again = load_file(str(out))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    emb = ["embed", "digits", "--split", "test", "--checkpoint", str(run), "--no-progress"]
    assert main([*emb, "--out", str(tmp_path / "f.npy")]) == 0
    assert main([*emb, "--out", str(tmp_path / "f.npy")]) == 2


def test_embed_leaves_out_unreadable_images(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "e.npy"
    assert main(["embed", str(folder), "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    assert np.load(out).shape[0] == 3
    names = (tmp_path / "e.names.txt").read_text().split()
    assert names == ["0.png", "1.png", "2.png"]
    assert "1 unreadable images left out" in capsys.readouterr().out
    (folder / "0.png").write_bytes(b"")
    for p in folder.glob("[12].png"):
        p.write_bytes(b"")
    assert (
        main(["embed", str(folder), "--checkpoint", str(run_dir), "--out", str(out), "--force"])
        == 2
    )


def test_evaluation_size_follows_the_pretraining(monkeypatch):
    """Whole images are evaluated at multicrop.eval_size when the run set it (crops of 24 px
    trained, images of 32 px evaluated), else at the large crop size; an explicit size wins."""
    from swav.demo import heldout_features
    from swav.interop.checkpoints import LoadedModel
    from swav.model.config import build_from_config

    cfg = build_config("demo", ["multicrop.sizes=[24,12]", "multicrop.eval_size=32"])
    model = build_from_config(cfg.model).eval()
    meta = {"config": {"multicrop": {"sizes": [24, 12], "eval_size": 32}}}
    loaded = LoadedModel(model=model, layout="swav-run", arch=cfg.model.arch, meta=meta)
    assert loaded.eval_transform().size == 32
    assert loaded.eval_transform(48).size == 48
    meta["config"]["multicrop"].pop("eval_size")
    assert loaded.eval_transform().size == 24

    seen: list[int] = []
    import swav.demo as demo

    real = demo.extract_features

    def spy(m, source, tf, *a, **k):
        seen.append(tf.size)
        return real(m, source, tf, *a, **k)

    monkeypatch.setattr(demo, "extract_features", spy)
    _, test = heldout_features(model, cfg, eval_limit=20)
    assert seen == [32, 32] and len(test.labels) == 20


def test_assign_reads_each_image_once_and_reports_the_unreadable(
    run_dir, tmp_path, capsys, monkeypatch
):
    """`swav assign` decodes each image once (the first twice: the check that one is readable,
    made before the model loads), prints the readable ones in order and names the others."""
    import swav.interop.inference as inference
    from swav.data.images import load_rgb

    paths = _random_pngs(tmp_path, 5, (12, 12), seed=1)
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    decoded: list[str] = []

    def counting(path):
        decoded.append(str(path))
        return load_rgb(path)

    monkeypatch.setattr(inference, "load_rgb", counting)
    assert main(["assign", *paths, "--checkpoint", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    printed = [ln.split("\t")[0] for ln in out.strip().splitlines()]
    assert printed == [paths[0], paths[1], paths[3], paths[4]]
    assert "1 of 5 images could not be read" in err and "2.png" in err
    assert sorted(decoded) == sorted([paths[0], *paths])


def test_image_batches_equal_one_batch(tmp_path):
    """Streaming in batches gives the same tensors, in the same order, as one stack."""
    from swav.data.images import load_rgb
    from swav.data.transforms import EvalTransform
    from swav.interop.inference import image_batches

    paths = _random_pngs(tmp_path, 5, (20, 16), seed=2)
    paths.insert(3, str(tmp_path / "missing.png"))
    tf = EvalTransform(16)
    bad: list[str] = []
    batches = list(image_batches(paths, tf, bad, batch_size=2))
    assert [len(n) for n, _ in batches] == [2, 2, 1]
    good = [p for p in paths if "missing" not in p]
    assert [p for n, _ in batches for p in n] == good
    assert bad == [f"{paths[3]} (no such file)"]
    want = torch.stack([tf(load_rgb(p)) for p in good])
    assert torch.equal(torch.cat([x for _, x in batches]), want)


def _random_pngs(folder, n: int, hw: tuple[int, int], seed: int) -> list[str]:
    """``n`` PNG files of random pixels in ``folder``: 0.png, 1.png, ..."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths
