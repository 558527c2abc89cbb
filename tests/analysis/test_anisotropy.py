"""SGD noise anisotropy (Zhu et al. 2019): known answers for Tr(H Sigma), its isotropic equivalent and the pieces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from greedy.analysis.anisotropy import (
    anisotropy_indicator,
    gradient_moments,
    hutchinson_trace,
    noise_anisotropy,
    top_hessian_eigs,
)


def _psd(d: int, seed: int) -> torch.Tensor:
    """A random symmetric PSD matrix with a spread-out spectrum."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(1, -2, d, dtype=torch.float64)) @ q.T


def _dense_tr_h_sigma(h: torch.Tensor, g: torch.Tensor) -> float:
    """Tr(H Sigma) with Sigma the 1/n covariance of the rows of g, both as dense matrices (small D only)."""
    c = g - g.mean(0)
    return float(torch.trace(h @ (c.T @ c / g.shape[0])))


def test_top_eigs_by_lanczos_match_the_dense_spectrum():
    h = _psd(40, seed=0)
    vals, vecs = top_hessian_eigs(lambda v: h @ v, 40, 5, seed=0, tol=1e-10)
    assert torch.allclose(vals, torch.linalg.eigvalsh(h).flip(0)[:5], rtol=1e-8)
    assert torch.allclose(vecs.T @ vecs, torch.eye(5, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(h @ vecs, vecs * vals, atol=1e-7)
    with pytest.raises(ValueError, match="rank"):
        top_hessian_eigs(lambda v: h @ v, 40, 0)


def test_low_rank_trace_is_exact_at_full_rank():
    """With r = D the eigenvectors span the space: sum_i lambda_i u_i^T Sigma u_i = Tr(H Sigma), deflated
    Hutchinson gives Tr(H) exactly (whatever the probes), and the top-r share of Tr(H) is 1."""
    d = 12
    h = _psd(d, seed=1) - 0.5 * torch.eye(d, dtype=torch.float64)  # indefinite: the identity needs no PSD
    g = torch.randn(300, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64) @ _psd(d, seed=3)
    vals, vecs = top_hessian_eigs(lambda v: h @ v, d, d)
    trace, _ = hutchinson_trace(lambda v: h @ v, d, probes=3, seed=0, deflate=vecs)
    moments = gradient_moments(g.split(64), vecs)  # chunks of 64 rows: streaming gives the same numbers
    res = anisotropy_indicator(vals, moments["u_sigma_u"], trace, moments["trace"], d)
    assert trace == pytest.approx(float(torch.trace(h)), abs=1e-10)
    assert moments["trace"] == pytest.approx(float(torch.trace(torch.cov(g.T, correction=0))), rel=1e-10)
    assert res["tr_h_sigma"] == pytest.approx(_dense_tr_h_sigma(h, g), rel=1e-10)
    assert res["top_fraction"] == pytest.approx(1.0, rel=1e-10)


def test_rank_r_estimate_is_a_lower_bound_for_a_psd_hessian_and_hutchinson_is_unbiased():
    d = 30
    h = _psd(d, seed=4)
    g = torch.randn(500, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    vals, vecs = top_hessian_eigs(lambda v: h @ v, d, 4, seed=0)
    moments = gradient_moments([g], vecs)
    exact = _dense_tr_h_sigma(h, g)
    low = anisotropy_indicator(vals, moments["u_sigma_u"], float(torch.trace(h)), moments["trace"], d)["tr_h_sigma"]
    assert 0.5 * exact < low < exact  # the top 4 of a log-spaced spectrum hold most of it, never all
    plain, err = hutchinson_trace(lambda v: h @ v, d, probes=400, seed=0)
    assert abs(plain - float(torch.trace(h))) < 4 * err  # undeflated: unbiased, within its standard error


def test_isotropic_gradient_noise_has_ratio_one():
    """g_n = +-s sqrt(D) e_i (each i, both signs): mean 0 and covariance exactly s^2 I, so for any H
    Tr(H Sigma) = s^2 Tr(H) = Tr(H) Tr(Sigma) / D (Tr(Sigma) = s^2 D): the ratio is 1."""
    d, s = 10, 0.3
    eye = torch.eye(d, dtype=torch.float64) * s * d**0.5
    g = torch.cat([eye, -eye])
    h = _psd(d, seed=6)
    vals, vecs = top_hessian_eigs(lambda v: h @ v, d, d)
    moments = gradient_moments([g], vecs)
    res = anisotropy_indicator(vals, moments["u_sigma_u"], float(torch.trace(h)), moments["trace"], d)
    assert moments["trace"] == pytest.approx(s**2 * d, rel=1e-12)
    assert res["tr_h_sigma"] == pytest.approx(s**2 * float(torch.trace(h)), rel=1e-10)
    assert res["ratio"] == pytest.approx(1.0, rel=1e-10)


def test_least_squares_at_its_optimum_known_answer():
    """Linear regression y = w*.x + eps, x ~ N(0, A), eps ~ N(0, s^2), loss (w.x - y)^2 / 2, at w = w*:
    g_n = (w*.x_n - y_n) x_n = -eps_n x_n, so Sigma = E[eps^2 x x^T] = s^2 A and H = E[x x^T] = A:
    Tr(H Sigma) = s^2 Tr(A^2) = s^2 (16 + 1 + 1 + 1) = 19 s^2, isotropic s^2 Tr(A)^2 / D = 49 s^2 / 4, and
    the ratio 4 * 19 / 49 = 1.551. Checked through the model-level estimator (per-sample gradients by vmap, H by
    Hessian-vector products) on n = 20000 samples: the sampling error of these traces is about 2 %."""
    d, s, n = 4, 0.5, 20000
    a_diag = torch.tensor([4.0, 1.0, 1.0, 1.0])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen) * a_diag.sqrt()
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    y = (x @ w.T).squeeze(1) + s * torch.randn(n, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    model.weight.data.copy_(w)
    loss = lambda out, t: 0.5 * ((out.squeeze(-1) - t) ** 2).mean()  # noqa: E731
    res = noise_anisotropy(model, x, y, rank=d, probes=2, loss=loss, batch_size=4096)
    assert res["dim"] == d and res["rank"] == d and res["n"] == n
    assert res["trace_h"] == pytest.approx(7.0, rel=0.03)  # Tr(A), exact on the sample (r = D)
    assert res["trace_sigma"] == pytest.approx(s**2 * 7.0, rel=0.05)
    assert res["tr_h_sigma"] == pytest.approx(19 * s**2, rel=0.06)
    assert res["tr_h_sigma_iso"] == pytest.approx(49 * s**2 / 4, rel=0.06)
    assert res["ratio"] == pytest.approx(4 * 19 / 49, rel=0.06)
    assert res["eigenvalues"][0] == pytest.approx(4.0, rel=0.03)
    assert res["mean_grad_sq"] < 1e-3  # at the optimum: the mean gradient is sampling noise


def test_estimator_takes_only_the_named_parameters_and_keeps_batchnorm_in_eval_mode():
    """A BatchNorm net in train mode: evaluated in eval mode (running statistics unchanged, mode restored);
    the chunked per-sample gradients and batched Hessian-vector products give the same numbers as one chunk."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    kw = {"rank": 3, "probes": 4, "params": ["3.weight", "3.bias"]}
    one = noise_anisotropy(model, x, y, batch_size=64, grad_chunk=64, **kw)
    many = noise_anisotropy(model, x, y, batch_size=16, grad_chunk=5, **kw)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert one["dim"] == 8 * 3 + 3
    for key in ("tr_h_sigma", "tr_h_sigma_iso", "trace_sigma", "lambda_max"):
        assert many[key] == pytest.approx(one[key], rel=1e-4), key
    with pytest.raises(ValueError, match="no such parameters"):
        noise_anisotropy(model, x, y, params=["9.weight"])
