"""Sample-propagation estimator of I(X;T) in noisy networks against numerically integrated answers."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from greedy.analysis.information import (
    gaussian_mixture_entropy,
    reduce_dim,
    sp_mutual_information,
    sp_mutual_information_layers,
    sp_mutual_information_noisy,
)


def _mixture_entropy_1d(centers: list[float], beta: float) -> float:
    """Entropy in nats of an equal-weight 1-D Gaussian mixture by quadrature."""

    def density(t: float) -> float:
        return float(np.mean([stats.norm.pdf(t, c, beta) for c in centers]))

    def integrand(t: float) -> float:
        p = density(t)
        return -p * math.log(p) if p > 0 else 0.0

    lo, hi = min(centers) - 12 * beta, max(centers) + 12 * beta
    return integrate.quad(integrand, lo, hi, limit=200, points=centers)[0]


def test_binary_input_unit_noise_gives_0486_bits() -> None:
    exact = (_mixture_entropy_1d([-1.0, 1.0], 1.0) - 0.5 * math.log(2 * math.pi * math.e)) / math.log(2)
    assert exact == pytest.approx(0.486, abs=5e-4)
    res = sp_mutual_information(torch.tensor([[-1.0], [1.0]]), beta=1.0, mc_samples=40000, seed=0)
    assert res["mi_bits"] == pytest.approx(exact, abs=0.02)
    assert res["mi_nats"] == pytest.approx(res["mi_bits"] * math.log(2))
    assert res["h_t_given_x"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    assert res["dim"] == 1 and res["n"] == 2
    # The same from 1000 samples of X (empirical distribution close to uniform on {-1, +1}).
    x = np.random.default_rng(0).choice([-1.0, 1.0], size=(1000, 1))
    res = sp_mutual_information(x, 1.0, mc_samples=20000, seed=1)
    assert res["mi_bits"] == pytest.approx(exact, abs=0.02)


def test_separated_points_with_small_noise_give_ln_m() -> None:
    m = 64
    centers = np.random.default_rng(1).standard_normal((m, 8)) * 10
    res = sp_mutual_information(centers, beta=0.05, mc_samples=4096, seed=0)
    assert res["mi_nats"] == pytest.approx(math.log(m), abs=1e-6)


def test_identical_outputs_carry_no_information() -> None:
    res = sp_mutual_information(np.ones((100, 5)), beta=0.3, mc_samples=1000)
    assert res["mi_nats"] == pytest.approx(0.0, abs=1e-9)


def test_mixture_entropy_matches_quadrature() -> None:
    centers = [-2.0, 0.3, 0.5, 3.0]
    res = gaussian_mixture_entropy(np.array(centers)[:, None], beta=0.7, mc_samples=40000, seed=2)
    assert res["entropy"] == pytest.approx(_mixture_entropy_1d(centers, 0.7), abs=4 * res["stderr"] + 1e-3)


def test_noisy_layer_with_random_inner_noise() -> None:
    # S = X + U, X uniform on {-1, 1}, an earlier layer's noise U uniform on {-a, a}; T = S + N(0, b^2).
    a, b = 0.6, 0.5
    s = np.array([[[-1 - a], [-1 + a]], [[1 - a], [1 + a]]])  # n=2 inputs x r=2 samples x d=1
    h_t = _mixture_entropy_1d([-1 - a, -1 + a, 1 - a, 1 + a], b)
    h_t_x = _mixture_entropy_1d([-a, a], b)
    res = sp_mutual_information_noisy(s, beta=b, mc_samples=40000, seed=3)
    assert res["h_t_given_x"] == pytest.approx(h_t_x, abs=0.02)
    assert res["mi_nats"] == pytest.approx(h_t - h_t_x, abs=0.02)


def test_noisy_estimator_reduces_to_deterministic_one() -> None:
    c = np.random.default_rng(4).standard_normal((30, 3)) * 5
    det = sp_mutual_information(c, beta=0.1, mc_samples=3000, seed=0)
    noisy = sp_mutual_information_noisy(np.repeat(c[:, None], 4, axis=1), beta=0.1, mc_samples=3000, seed=0)
    assert noisy["h_t_given_x"] == pytest.approx(det["h_t_given_x"], abs=1e-9)
    assert noisy["mi_nats"] == pytest.approx(det["mi_nats"], abs=1e-6)


def test_reduce_dim_pca_and_pool() -> None:
    rng = np.random.default_rng(5)
    low = rng.standard_normal((200, 3)) * [5.0, 3.0, 1.0]
    X = low @ np.linalg.qr(rng.standard_normal((40, 40)))[0][:3]  # 200 x 40 with rank 3
    Z = reduce_dim(X, 3, method="pca")
    assert Z.shape == (200, 3)
    sv = np.linalg.svd(low - low.mean(0), compute_uv=False)
    assert np.allclose(np.linalg.svd(Z.numpy(), compute_uv=False), sv)
    maps = torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert reduce_dim(maps, 16, method="pool").shape == (10, 16)  # 4 channels x 2 x 2
    # float32 means computed two ways: equal to float32 rounding, not bit for bit
    assert torch.allclose(reduce_dim(maps, 4, method="pool"), maps.mean(dim=(2, 3)).double(), atol=1e-6)
    assert reduce_dim(torch.arange(12.0).reshape(2, 6), 3, method="pool").tolist() == [[0.5, 2.5, 4.5],
                                                                                       [6.5, 8.5, 10.5]]
    assert reduce_dim(maps, 1000).shape == (10, 256)  # already small enough: flattened unchanged


def test_layers_helper_records_dimension() -> None:
    rng = np.random.default_rng(6)
    layers = [rng.standard_normal(shape) for shape in [(50, 2), (50, 4, 3, 3), (50, 100)]]
    res = sp_mutual_information_layers(layers, beta=0.5, mc_samples=500, max_dim=4)
    assert [r["dim"] for r in res] == [2, 4, 4]
    assert [r["layer"] for r in res] == [0, 1, 2]
    noisy = sp_mutual_information_layers([rng.standard_normal((20, 3, 10))], beta=0.5, mc_samples=500,
                                         max_dim=2, samples_per_input=True)
    assert noisy[0]["dim"] == 2 and noisy[0]["n"] == 20
    for r in res:
        assert -0.05 < r["mi_nats"] <= math.log(r["n"]) + 1e-9
    assert -0.05 < noisy[0]["mi_nats"] <= math.log(20 * 3) + 1e-9
