"""DeepCluster-v2 and SeLa-v2: k-means and Sinkhorn pseudo-labels over a memory bank, against
references written from the math, across processes, and through a resumed run."""

import os
import signal

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from swav.config import build_config
from swav.engine.checkpoint import safe_load
from swav.engine.run_dir import read_metrics
from swav.engine.train import pretrain
from swav.objective.clustering import (
    BankShard,
    global_labels,
    sela_assignments,
    spherical_kmeans,
)
from tests.conftest import tiny_overrides


def bank(n=60, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(4, d, generator=g), dim=1)
    x = centres[torch.arange(n) % 4] + 0.3 * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1), torch.arange(n)


def kmeans_reference(x, k, iterations, seed):
    """Spherical k-means in float64, from the definition: start at k rows drawn at random
    (the same draw as the library: a seeded permutation of the row indices), assign each row to
    the centroid of largest cosine, centroid = normalised sum of its rows."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=g)[:k].numpy()
    x = x.double().numpy()
    c = x[pick] / np.linalg.norm(x[pick], axis=1, keepdims=True)
    for _ in range(iterations):
        a = (x @ c.T).argmax(1)
        for j in range(k):
            s = x[a == j].sum(0)
            assert np.linalg.norm(s) > 0, "the reference bank has no empty cluster"
            c[j] = s / np.linalg.norm(s)
    return c, (x @ c.T).argmax(1)


def test_kmeans_equals_the_reference_in_float64():
    x, idx = bank()
    centroids, assign, reseeded = spherical_kmeans(BankShard(x, idx), 4, 60, 10, seed=3)
    ref_c, ref_a = kmeans_reference(x, 4, 10, seed=3)
    assert reseeded == 0
    np.testing.assert_allclose(centroids.double().numpy(), ref_c, atol=1e-5)
    assert np.array_equal(assign.numpy(), ref_a)


def test_empty_clusters_are_reseeded():
    # two groups of identical rows: any two initial centroids drawn from one group tie, and
    # one of them is left without rows after the first assignment
    x = F.normalize(torch.tensor([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10 + [[1.0, 1.0]] * 10), dim=1)
    idx = torch.arange(30)
    total = 0
    for seed in range(20):
        centroids, assign, reseeded = spherical_kmeans(BankShard(x, idx), 3, 30, 5, seed)
        total += reseeded
        if reseeded:
            counts = torch.bincount(assign, minlength=3)
            assert (counts > 0).all(), "a re-seeded cluster that stays empty"
            assert sorted(counts.tolist()) == [10, 10, 10]
    assert total > 0, "no draw produced an empty cluster: the test does not test"


def test_empty_rows_of_the_bank_are_ignored():
    x, idx = bank()
    holes = idx.clone()
    holes[::5] = -1
    shard = BankShard(x, holes)
    _, assign, _ = spherical_kmeans(shard, 4, 60, 5, seed=0)
    labels = global_labels(shard, assign, 60)
    assert (labels[::5] == -1).all() and (labels[1::5] >= 0).all()


def test_sela_pseudo_labels_satisfy_the_equal_partition():
    x, idx = bank(n=64)
    protos = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    codes, labels = sela_assignments(BankShard(x, idx), protos, epsilon=0.05, iterations=50)
    # the transport plan: every image one unit, every prototype N / K
    torch.testing.assert_close(codes.sum(1), torch.ones(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(codes.sum(0), torch.full((8,), 8.0), atol=1e-2, rtol=0)
    assert torch.equal(labels, codes.argmax(1))
    counts = torch.bincount(labels, minlength=8)
    assert counts.min() >= 4 and counts.max() <= 12  # hard labels close to equal partition
    # plain argmax of the scores is far from it on the same bank
    plain = torch.bincount((x @ F.normalize(protos, dim=1).T).argmax(1), minlength=8)
    assert plain.max() - plain.min() > counts.max() - counts.min()


def _ranks(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, idx = bank()
    mine = slice(0, 25) if rank == 0 else slice(25, 60)  # unequal shards
    shard = BankShard(x[mine], idx[mine])
    centroids, assign, _ = spherical_kmeans(shard, 4, 60, 10, seed=3)
    labels = global_labels(shard, assign, 60)
    protos = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    _, sela = sela_assignments(shard, protos, 0.05, 50)
    torch.save(
        {"centroids": centroids, "labels": labels, "sela": global_labels(shard, sela, 60)},
        os.path.join(out_dir, f"{rank}.pt"),
    )
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.spawn(_ranks, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, idx = bank()
    shard = BankShard(x, idx)
    centroids, assign, _ = spherical_kmeans(shard, 4, 60, 10, seed=3)
    protos = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    _, sela = sela_assignments(shard, protos, 0.05, 50)
    for r in range(2):
        got = torch.load(tmp_path / f"{r}.pt")
        torch.testing.assert_close(got["centroids"], centroids, atol=1e-5, rtol=0)
        assert torch.equal(got["labels"], global_labels(shard, assign, 60))
        assert torch.equal(got["sela"], global_labels(shard, sela, 60))


def _config(run, method, epochs):
    over = {
        "train.epochs": epochs,
        "train.iters_per_epoch": 4,
        "model.n_prototypes": "[12,12]",
        "train.deterministic": "true",
    }
    return build_config(None, [*tiny_overrides(run, **over), f"method={method}"])


@pytest.mark.parametrize("method", ["deepclusterv2", "selav2"])
def test_a_resumed_run_continues_with_the_same_bank_and_loss(tmp_path, method, monkeypatch):
    straight = tmp_path / "straight"
    pretrain(_config(straight, method, 2), progress=False)
    # the same run, stopped in the middle of the second epoch by SIGTERM, then resumed
    resumed = tmp_path / "resumed"
    from swav.objective.cluster_loss import ClusterLoss

    real, calls = ClusterLoss.forward, {"n": 0}

    def signalling(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(ClusterLoss, "forward", signalling)
    first = pretrain(_config(resumed, method, 2), progress=False)
    monkeypatch.undo()
    assert first.interrupted and safe_load(resumed / "checkpoint.pt")["next_batch"] == 2
    pretrain(_config(resumed, method, 2), progress=False)
    a, b = safe_load(straight / "checkpoint.pt"), safe_load(resumed / "checkpoint.pt")
    for key in ("embeddings", "indices"):
        assert torch.equal(a["objective"]["bank"][key], b["objective"]["bank"][key])
    assert torch.equal(a["objective"]["labels"], b["objective"]["labels"])
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=1e-6, rtol=0)

    def losses(run):
        return {m["iteration"]: m["loss"] for m in read_metrics(run) if "kind" not in m}

    assert losses(straight) == losses(resumed)
    kinds = [m for m in read_metrics(straight) if m.get("kind") == "clustering"]
    assert [m["epoch"] for m in kinds] == [1, 2] and kinds[0]["heads"] == 2
