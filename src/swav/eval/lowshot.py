"""Low-shot linear SVMs on frozen features (the VOC07 low-shot protocol): for k = 1 ... 96
examples per class, train one-vs-rest linear SVMs on k random examples of each class, choose the
cost by cross-validation on those samples, and report mean and spread over several draws."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from swav.values import DEFAULT_SHOTS

log = logging.getLogger(__name__)

COSTS = (0.01, 0.1, 1.0, 10.0)


def lowshot_sample(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Exactly ``min(k, n_c)`` indices of every class c, drawn from ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def lowshot_svm(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 5,
    costs: Sequence[float] = COSTS,
    seed: int = 0,
) -> dict[int, dict[str, Any]]:
    """Top-1 accuracy (%) mean / std / chosen costs per k, for every k that the smallest class
    of the training data can supply (a larger k would repeat the largest one's samples); the
    others are left out and logged. Solver warnings are counted, not printed one by one."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    smallest = int(np.unique(np.asarray(train_y), return_counts=True)[1].min())
    skipped = [k for k in shots if k > smallest]
    if skipped:
        log.warning(
            "low-shot: k = %s left out: the smallest class has %d training images",
            ", ".join(map(str, skipped)),
            smallest,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("always", UserWarning)
        out = _svm_per_shot(
            train_x,
            train_y,
            test_x,
            test_y,
            shots=[k for k in shots if k <= smallest],
            draws=draws,
            costs=costs,
            seed=seed,
        )
    if caught:
        log.warning("low-shot: the SVM solver warned %d times (%s)", len(caught), caught[0].message)
    return out


def _svm_per_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: Sequence[int],
    draws: int,
    costs: Sequence[float],
    seed: int,
) -> dict[int, dict[str, Any]]:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    def norm(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train_x, test_x = norm(train_x), norm(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    out = {}
    for k in shots:
        accs, chosen = [], []
        for d in range(draws):
            idx = lowshot_sample(train_y, k, seed + 1000 * d + k)
            x, y = train_x[idx], train_y[idx]
            if k >= 2:
                cv = StratifiedKFold(n_splits=min(k, 3), shuffle=True, random_state=seed + d)
                search = GridSearchCV(LinearSVC(max_iter=5000), {"C": list(costs)}, cv=cv)
                search.fit(x, y)
                clf, c = search.best_estimator_, search.best_params_["C"]
            else:  # one example per class: no cross-validation possible
                c = 1.0
                clf = LinearSVC(C=c, max_iter=5000).fit(x, y)
            accs.append(100.0 * float((clf.predict(test_x) == test_y).mean()))
            chosen.append(c)
        out[k] = {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "costs": [float(c) for c in chosen],
        }
    return out
