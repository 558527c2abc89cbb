"""Error rate in Gaussian noise and the implied distance, against a linear classifier's margins."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from greedy.analysis.robustness import implied_distance, noise_error_rates


def test_implied_distance_inverts_the_halfspace_error_rate() -> None:
    d = np.array([0.1, 0.5, 1.0, 2.5])
    for sigma in (0.5, 2.0):
        assert np.allclose(implied_distance(norm.cdf(-d / sigma), sigma), d)
    assert implied_distance(0.0, 1.0) == math.inf
    assert np.isnan(implied_distance(0.5, 1.0)) and np.isnan(implied_distance(0.9, 1.0))


def _linear_setup(margins: np.ndarray, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    dim = 10
    w = rng.standard_normal(dim)
    w /= np.linalg.norm(w)
    y = rng.integers(0, 2, size=margins.size)
    side = np.where(y == 1, 1.0, -1.0)
    tangent = rng.standard_normal((margins.size, dim))
    tangent -= (tangent @ w)[:, None] * w  # move freely along the hyperplane
    X = tangent + (side * margins)[:, None] * w
    wt = torch.tensor(w, dtype=torch.float32)

    def model(x: torch.Tensor) -> torch.Tensor:
        s = x @ wt
        return torch.stack([-s, s], dim=1)  # logits; class 1 iff w.x > 0

    return model, X, y


def test_noise_distance_recovers_the_margin_of_a_linear_classifier() -> None:
    margins = np.linspace(0.4, 1.6, 25)
    model, X, y = _linear_setup(margins, seed=0)
    res = noise_error_rates(model, X, y, sigmas=[1.0, 2.0], n_samples=4000, seed=0)
    assert res["clean_correct"].all()
    for i, sigma in enumerate(res["sigmas"]):
        assert np.allclose(res["error_rate"][i], norm.cdf(-margins / sigma), atol=0.025)
        assert np.allclose(res["distance"][i], margins, atol=0.12)
        assert res["median_distance"][i] == pytest.approx(np.median(margins), abs=0.05)
    assert res["mean_error"].shape == (2,) and res["distance"].shape == (2, 25)


def test_distance_from_mean_error_for_equal_margins() -> None:
    model, X, y = _linear_setup(np.full(40, 0.8), seed=1)
    res = noise_error_rates(model, torch.tensor(X), torch.tensor(y), sigmas=[0.5, 1.0], n_samples=2000)
    assert np.allclose(res["distance_from_mean_error"], 0.8, atol=0.03)


def test_label_outputs_and_far_points() -> None:
    model, X, y = _linear_setup(np.full(5, 50.0), seed=2)

    def labels(x: torch.Tensor) -> torch.Tensor:
        return model(x).argmax(dim=1)

    res = noise_error_rates(labels, X, y, sigmas=[0.1], n_samples=50)
    assert (res["error_rate"] == 0).all() and np.isinf(res["distance"]).all()
    assert np.isinf(res["median_distance"][0]) and np.isinf(res["distance_from_mean_error"][0])
