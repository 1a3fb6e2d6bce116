import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from swav.errors import UsageError
from swav.eval.clustering import cluster_metrics, hungarian_accuracy
from swav.eval.knn import knn_accuracy, knn_predict
from swav.eval.linear import carve_validation, linear_probe_features
from swav.eval.lowshot import lowshot_sample, lowshot_svm
from swav.eval.semisup import balanced_subset


def separable(n_per_class=50, classes=4, dim=16, seed=0, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 5
    x = torch.cat(
        [centres[c] + spread * torch.randn(n_per_class, dim, generator=g) for c in range(classes)]
    )
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return x, y


def test_knn_perfect_on_separable_features():
    xtr, ytr = separable(seed=0)
    xte, yte = separable(seed=1)
    res = knn_accuracy(xtr, ytr, xte, yte, ks=(1, 10, 20))
    assert all(r["top1"] == 100.0 for r in res.values())


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(300, 8, generator=g), torch.randint(0, 5, (300,), generator=g)
    xte = torch.randn(70, 8, generator=g)
    k, t = 15, 0.07
    got = knn_predict(xtr, ytr, xte, ks=(k,), temperature=t, n_classes=5, chunk=16)[k]
    a = xtr / xtr.norm(dim=1, keepdim=True)
    b = xte / xte.norm(dim=1, keepdim=True)
    expected = torch.zeros(70, 5)
    for i in range(70):
        sims = [(float(b[i] @ a[j]), int(ytr[j])) for j in range(300)]
        sims.sort(key=lambda s: -s[0])
        for s, c in sims[:k]:
            expected[i, c] += np.exp(s / t)
    # the weights are relative to each sample's nearest neighbour: the same votes up to a
    # factor per test sample
    share = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(got / got.sum(1, keepdim=True), share, rtol=1e-4)


def test_knn_small_temperatures_give_the_nearest_neighbour_not_nan():
    g = torch.Generator().manual_seed(1)
    xtr, ytr = torch.randn(200, 8, generator=g), torch.randint(0, 4, (200,), generator=g)
    xte, yte = torch.randn(50, 8, generator=g), torch.randint(0, 4, (50,), generator=g)
    tiny = knn_predict(xtr, ytr, xte, ks=(20,), temperature=1e-4, n_classes=4)[20]
    assert torch.isfinite(tiny).all()
    one = knn_predict(xtr, ytr, xte, ks=(1,), temperature=0.07, n_classes=4)[1]
    assert torch.equal(tiny.argmax(1), one.argmax(1))  # exp(-large) ~ 0: the nearest decides
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="temperature"):
            knn_accuracy(xtr, ytr, xte, yte, ks=(5,), temperature=bad)


def test_linear_probe_learns_easy_task():
    xtr, ytr = separable(100, 5, 32, seed=0, spread=1.0)
    xte, yte = separable(40, 5, 32, seed=1, spread=1.0)
    r = linear_probe_features(xtr, ytr, xte, yte, epochs=20, batch_size=64, val_fraction=0.1)
    assert r.top1 > 95 and r.val_top1 is not None and r.val_top1 > 90


def test_validation_is_carved_from_training_only():
    y = torch.arange(4).repeat_interleave(20)
    tr, va = carve_validation(y, 0.25, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 80
    assert torch.bincount(y[va]).tolist() == [5, 5, 5, 5]


def test_lowshot_sampling_balanced_and_reproducible():
    y = np.repeat(np.arange(6), 30)
    a = lowshot_sample(y, 4, seed=3)
    assert np.bincount(y[a]).tolist() == [4] * 6
    assert np.array_equal(a, lowshot_sample(y, 4, seed=3))
    assert not np.array_equal(a, lowshot_sample(y, 4, seed=4))


def test_lowshot_svm_runs_and_improves_with_shots():
    xtr, ytr = separable(40, 4, 16, seed=0, spread=1.0)
    xte, yte = separable(30, 4, 16, seed=1, spread=1.0)
    r = lowshot_svm(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), shots=(1, 8), draws=3)
    assert set(r) == {1, 8} and r[8]["mean"] >= r[1]["mean"] and r[8]["mean"] > 90


@pytest.mark.parametrize("fraction,per_class", [(0.01, 3), (0.1, 30)])
def test_semisup_subsets_exact_per_class(fraction, per_class):
    labels = np.repeat(np.arange(10), 300)
    idx = balanced_subset(labels, fraction, seed=0)
    assert np.bincount(labels[idx]).tolist() == [per_class] * 10
    assert idx == balanced_subset(labels, fraction, seed=0)


def test_cluster_metrics_match_sklearn():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    clusters = np.array([5, 5, 1, 1, 1, 1, 7, 7, 7, 5])
    m = cluster_metrics(labels, clusters)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert m["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    # best one-to-one map: 5->0 (2), 1->1 (3), 7->2 (3): 8 of 10
    assert m["hungarian_acc"] == pytest.approx(80.0)
    assert m["prototypes_used"] == 3
    assert hungarian_accuracy(labels, labels + 10) == 100.0


def test_lowshot_leaves_out_shots_the_smallest_class_cannot_supply(caplog, recwarn):
    rng = np.random.default_rng(0)
    y = np.array([0] * 9 + [1] * 3 + [2] * 9)  # class 1 has 3 images
    x = rng.normal(size=(len(y), 8)) + y[:, None]
    with caplog.at_level("WARNING"):
        r = lowshot_svm(x, y, x, y, shots=(1, 2, 3, 4, 8), draws=2)
    assert sorted(r) == [1, 2, 3]
    assert "k = 4, 8 left out: the smallest class has 3" in caplog.text
    assert not [w for w in recwarn if "sklearn" in str(w.filename)]  # counted, not printed
