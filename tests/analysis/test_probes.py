"""Linear-probe and kNN accuracy against cases with known answers."""

import numpy as np
import torch

from greedy.analysis.probes import knn_accuracy, linear_probe


def test_linear_probe_separates_a_hyperplane() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(20)
    X = rng.standard_normal((1200, 20))
    y = (X @ w > 0).astype(int)
    res = linear_probe(X[:600], y[:600], X[600:], y[600:])
    assert res["train_acc"] >= 0.98
    assert res["test_acc"] >= 0.98


def test_linear_probe_random_labels_stay_at_chance() -> None:
    rng = np.random.default_rng(1)
    k = 4
    X = rng.standard_normal((3000, 20))
    y = rng.integers(0, k, size=3000)
    res = linear_probe(X[:500], y[:500], torch.tensor(X[500:]), torch.tensor(y[500:]))
    assert abs(res["test_acc"] - 1 / k) < 0.04
    assert res["train_acc"] > res["test_acc"]  # memorises some of the noise


def _clusters(rng: np.random.Generator, k: int, per: int, dim: int, spread: float) -> tuple:
    centers = rng.standard_normal((k, dim)) * 10
    y = np.repeat(np.arange(k), per)
    return centers[y] + spread * rng.standard_normal((k * per, dim)), y


def test_knn_well_separated_clusters_is_perfect() -> None:
    rng = np.random.default_rng(2)
    Xtr, ytr = _clusters(rng, 5, 40, 16, 0.1)
    perm = rng.permutation(len(ytr))
    Xte, yte = Xtr[perm][:50] + 0.05 * rng.standard_normal((50, 16)), ytr[perm][:50]
    assert knn_accuracy(Xtr, ytr, Xte, yte, k=5) == 1.0
    assert knn_accuracy(torch.tensor(Xtr), torch.tensor(ytr), k=3) == 1.0  # leave-one-out


def test_knn_uses_cosine_not_euclidean_distance() -> None:
    # Class 0 points lie along e1, class 1 along e2, at wildly different norms: cosine kNN is perfect.
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.1, 100.0, size=(200, 1))
    y = np.repeat([0, 1], 100)
    dirs = np.where(y[:, None] == 0, [1.0, 0.0], [0.0, 1.0]) + 0.05 * rng.standard_normal((200, 2))
    assert knn_accuracy(dirs * scale, y, k=7) == 1.0


def test_knn_random_labels_near_chance() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((1000, 10))
    y = rng.integers(0, 2, size=1000)
    assert abs(knn_accuracy(X, y, k=5) - 0.5) < 0.06
