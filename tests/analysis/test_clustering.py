"""Scatter ratio, NC1, silhouette and binned entropy against cases with known answers."""

import math

import numpy as np
import pytest
import torch

from greedy.analysis.clustering import (
    bin_units,
    binned_entropy,
    nc1,
    scatter_ratio,
    scatter_traces,
    silhouette,
)


def _two_gaussians(n: int, d: int, mu: float, s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = s * rng.standard_normal((n, d))
    X[:, 0] += np.where(y == 0, -mu, mu)
    return X, y


def test_scatter_ratio_two_gaussians() -> None:
    d, mu, s = 20, 2.0, 0.5
    X, y = _two_gaussians(20000, d, mu, s, seed=0)
    res = scatter_traces(X, y)
    assert res["tr_sw"] == pytest.approx(d * s**2, rel=0.02)
    assert res["tr_sb"] == pytest.approx(mu**2, rel=0.02)
    assert scatter_ratio(X, y) == pytest.approx(d * s**2 / mu**2, rel=0.03)


def test_features_at_class_means_have_zero_scatter_and_nc1() -> None:
    rng = np.random.default_rng(1)
    means = rng.standard_normal((4, 12))
    y = rng.integers(0, 4, size=300)
    X = torch.tensor(means[y])
    assert scatter_ratio(X, y) == pytest.approx(0.0, abs=1e-12)
    assert nc1(X, y) == pytest.approx(0.0, abs=1e-12)


def test_nc1_two_gaussians() -> None:
    # S_B = mu^2 e1 e1^T, so Tr(S_W S_B^+) = s^2 / mu^2, and NC1 = s^2 / (K mu^2) with K = 2.
    mu, s = 2.0, 0.5
    X, y = _two_gaussians(20000, 20, mu, s, seed=2)
    assert nc1(X, y) == pytest.approx(s**2 / (2 * mu**2), rel=0.05)


def test_nc1_ignores_scatter_orthogonal_to_class_means_unlike_the_ratio() -> None:
    rng = np.random.default_rng(3)
    k, per, d = 3, 200, 10
    y = np.repeat(np.arange(k), per)
    means = np.zeros((k, d))
    means[:, :2] = rng.standard_normal((k, 2)) * 3
    noise = np.zeros((k * per, d))
    noise[:, 2:] = rng.standard_normal((k * per, d - 2))
    for c in range(k):  # exact zero-mean noise per class, so class means are exactly `means`
        noise[y == c] -= noise[y == c].mean(axis=0)
    X = means[y] + noise
    assert nc1(X, y) == pytest.approx(0.0, abs=1e-10)
    assert scatter_ratio(X, y) > 0.1


def test_nc1_matches_dense_pseudoinverse_formula() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, size=400)
    X = rng.standard_normal((400, 8)) + rng.standard_normal((5, 8))[y]
    classes, counts = np.unique(y, return_counts=True)
    mu = X.mean(axis=0)
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    w = counts / len(y)
    sw = sum(w[c] * np.cov(X[y == c].T, bias=True) for c in classes)
    sb = sum(w[c] * np.outer(means[c] - mu, means[c] - mu) for c in classes)
    assert nc1(X, y) == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / 5, rel=1e-8)
    assert scatter_ratio(X, y) == pytest.approx(np.trace(sw) / np.trace(sb), rel=1e-10)


def test_silhouette_separated_and_overlapping() -> None:
    X, y = _two_gaussians(600, 5, mu=10.0, s=0.5, seed=5)
    assert silhouette(X, y) > 0.9
    X, y = _two_gaussians(600, 5, mu=0.0, s=1.0, seed=6)
    assert abs(silhouette(X, y, sample_size=400)) < 0.05


def test_binned_entropy_of_k_separated_clusters_is_ln_k() -> None:
    rng = np.random.default_rng(7)
    k, per = 8, 50
    y = np.repeat(np.arange(k), per)
    X = 10.0 * np.eye(k)[y] + 0.01 * rng.standard_normal((k * per, k))
    assert binned_entropy(X, n_bins=10) == pytest.approx(math.log(k), abs=1e-12)
    assert binned_entropy(X, n_bins=30, value_range=(-1.0, 11.0)) == pytest.approx(math.log(k), abs=1e-12)


def test_binned_entropy_limits() -> None:
    rng = np.random.default_rng(8)
    assert binned_entropy(np.ones((100, 3))) == 0.0
    u = rng.uniform(size=(100000, 1))
    assert binned_entropy(u, n_bins=10) == pytest.approx(math.log(10), abs=1e-3)  # uniform over 10 bins
    distinct = rng.standard_normal((500, 50))
    assert binned_entropy(distinct, n_bins=30) == pytest.approx(math.log(500))  # saturates at ln N


def test_bin_units_edges_and_clipping() -> None:
    X = np.array([[0.0, -5.0], [0.5, 0.25], [1.0, 5.0]])
    assert bin_units(X, n_bins=4).tolist() == [[0, 0], [2, 2], [3, 3]]
    assert bin_units(X, n_bins=4, value_range=(0.0, 1.0)).tolist() == [[0, 0], [2, 1], [3, 3]]
