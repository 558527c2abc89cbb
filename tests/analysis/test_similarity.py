"""Linear CKA against cases with known answers."""

import numpy as np
import pytest
import torch

from greedy.analysis.similarity import cka_matrix, linear_cka


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def _naive_cka(X: np.ndarray, Y: np.ndarray) -> float:
    n = X.shape[0]
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float(np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L)))


@pytest.mark.parametrize("n,d", [(500, 30), (40, 200)])  # feature form (N >= D) and Gram form (N < D)
def test_cka_invariant_to_orthogonal_transform_and_scale(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 3.0, size=d) + 4.0
    Y = -3.7 * X @ _orthogonal(rng, d)
    assert linear_cka(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(torch.tensor(X), X) == pytest.approx(1.0, abs=1e-10)


def test_cka_of_independent_features_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((5000, 20)), rng.standard_normal((5000, 30))
    assert linear_cka(X, Y) < 0.1


def test_cka_matches_naive_formula_in_all_forms() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 10))
    Y = np.tanh(X @ rng.standard_normal((10, 100)))  # Gram form
    Z = X[:, :5] ** 2  # feature form
    for A, B in [(X, Y), (Y, X), (Y, Y + 0.1 * rng.standard_normal(Y.shape)), (X, Z)]:
        assert linear_cka(A, B) == pytest.approx(_naive_cka(A, B), rel=1e-9)


def test_cka_matrix_within_and_between_runs() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 16))
    layers = [base, np.maximum(base @ rng.standard_normal((16, 32)), 0), rng.standard_normal((200, 8))]
    m = cka_matrix(layers)
    assert m.shape == (3, 3)
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(linear_cka(layers[0], layers[1]))
    other = [2.0 * layers[0] @ _orthogonal(rng, 16), layers[2]]
    ab = cka_matrix(layers, other)
    assert ab.shape == (3, 2)
    assert ab[0, 0] == pytest.approx(1.0) and ab[2, 1] == pytest.approx(1.0)
    assert ab[1, 1] == pytest.approx(linear_cka(layers[1], layers[2]))
