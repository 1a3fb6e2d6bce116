"""How well the prototypes cluster the classes: each image goes to its highest-scoring prototype;
NMI, ARI and Hungarian-matched accuracy against the labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy (in %) of the best one-to-one matching of clusters to classes (clusters left
    without a class count as errors)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    classes, y = np.unique(labels, return_inverse=True)
    ids, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    rows, cols = linear_sum_assignment(-table)
    return 100.0 * table[rows, cols].sum() / len(labels)


def majority_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy (in %) when each cluster predicts its most frequent class (many-to-one)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    correct = 0
    for c in np.unique(clusters):
        correct += np.bincount(labels[clusters == c]).max()
    return 100.0 * correct / len(labels)


def cluster_metrics(
    labels: np.ndarray | Sequence[int],
    clusters: np.ndarray | Sequence[int],
    n_prototypes: int | None = None,
) -> dict[str, float]:
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    out = {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "hungarian_acc": hungarian_accuracy(labels, clusters),
        "majority_acc": majority_accuracy(labels, clusters),
        "prototypes_used": int(len(np.unique(clusters))),
    }
    if n_prototypes is not None:
        out["prototypes"] = int(n_prototypes)
    return out
