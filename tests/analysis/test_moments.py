"""Labatie's moments: effective rank, normalized sensitivity, and their known values on linear and tanh nets."""

import math
import warnings

import pytest
import torch

from greedy.analysis.chaos import chi1_at_fixed_point
from greedy.analysis.moments import (
    CovarianceSums,
    channel_vectors,
    effective_rank,
    layer_moments,
    normalized_sensitivity,
    signal_noise_moments,
)
from greedy.analysis.representations import Layer
from greedy.models import GreedyNet


def test_effective_rank_is_trace_over_largest_eigenvalue():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.diag(torch.tensor([4.0, 2.0, 2.0, 0.0]))) == pytest.approx(2.0)  # (4+2+2)/4
    u = torch.randn(5, generator=torch.Generator().manual_seed(0)).double()
    assert effective_rank(torch.outer(u, u)) == pytest.approx(1.0)
    assert math.isnan(effective_rank(torch.zeros(3, 3)))


def test_normalized_sensitivity_is_the_square_root_of_the_ratio_of_noise_to_signal_ratios():
    # input: noise/signal = 0.5; layer: 8/2 = 4, i.e. 8 times the input's -> chi = sqrt(8)
    assert normalized_sensitivity(2.0, 8.0, 2.0, 1.0) == pytest.approx(math.sqrt(8.0))
    assert normalized_sensitivity(3.0, 3.0, 3.0, 3.0) == 1.0
    assert normalized_sensitivity(0.0, 1.0, 1.0, 1.0) == math.inf


def test_channel_vectors_and_streaming_covariance_match_the_batch_covariance():
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(6, 3, 4, 5, generator=gen).double() + torch.tensor([1.0, -2.0, 0.5]).double()[:, None, None]
    v = channel_vectors(maps)
    assert v.shape == (6 * 4 * 5, 3) and torch.equal(v[1], maps[0, :, 0, 1])  # position (0, 1) of input 0
    sums = CovarianceSums()
    sums.add(maps[:2])
    sums.add(maps[2:])
    assert torch.allclose(sums.covariance(), torch.cov(v.T, correction=0))
    with pytest.raises(ValueError, match="N x C x H x W"):
        channel_vectors(torch.zeros(2, 3, 4))


def _random_signal(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An anisotropic signal (effective rank well between 1 and d) and a unit Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen).double() * torch.linspace(0.2, 2.0, d).double() + 3.0
    return x, torch.randn(n, d, generator=gen).double()


def test_orthogonal_linear_net_keeps_chi_at_1_and_the_effective_rank_of_its_input():
    # x^l = x^{l-1} Q_l with Q_l orthogonal: covariances are rotated (same eigenvalues), so signal and noise powers,
    # both effective ranks and hence chi = 1 are exactly those of the input at every depth.
    x, dx = _random_signal(500, 16, seed=0)
    gen = torch.Generator().manual_seed(1)
    signals, noises = [x], [dx]
    for _ in range(6):
        q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen).double())
        signals.append(signals[-1] @ q)
        noises.append(noises[-1] @ q)  # the Jacobian of x -> x Q is Q
    rows = signal_noise_moments(signals, noises)
    assert 2.0 < rows[0]["reff_signal"] < 15.0
    for row in rows:
        assert row["chi"] == pytest.approx(1.0, abs=1e-12)
        assert row["reff_signal"] == pytest.approx(rows[0]["reff_signal"], rel=1e-10)
        assert row["reff_noise"] == pytest.approx(rows[0]["reff_noise"], rel=1e-10)


def test_a_rank_one_layer_collapses_signal_and_noise_to_one_dimension():
    x, dx = _random_signal(500, 16, seed=2)
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(16, 1, generator=gen).double(), torch.randn(1, 16, generator=gen).double()
    w = torch.linalg.qr(torch.randn(16, 16, generator=gen).double())[0]
    signals = [x, x @ w, x @ w @ (u @ v), x @ w @ (u @ v) @ w]
    noises = [dx, dx @ w, dx @ w @ (u @ v), dx @ w @ (u @ v) @ w]
    rows = signal_noise_moments(signals, noises)
    assert rows[1]["reff_signal"] > 2.0
    assert [r["reff_signal"] for r in rows[2:]] == pytest.approx([1.0, 1.0])
    assert [r["reff_noise"] for r in rows[2:]] == pytest.approx([1.0, 1.0])


def _tanh_mlp_chi(sigma_w: float, depth: int = 12, width: int = 256, seed: int = 0) -> list[float]:
    """chi by depth of a random tanh MLP, W ~ N(0, sigma_w^2 / width), noise propagated by a JVP."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(width, width, generator=gen).double() * sigma_w / math.sqrt(width) for _ in range(depth)]

    def layers(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [x]
        for w in weights:
            outs.append(torch.tanh(outs[-1] @ w.T))
        return tuple(outs)

    x = torch.randn(400, width, generator=gen).double()
    dx = torch.randn(400, width, generator=gen).double()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        signals, noises = torch.func.jvp(layers, (x,), (dx,))
    return [r["chi"] for r in signal_noise_moments(list(signals), list(noises))]


def test_chi_grows_with_depth_in_the_chaotic_phase_of_a_tanh_net():
    # Mean field (Poole et al. 2016): once the signal variance sits at its fixed point q*, the noise power is
    # multiplied by chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2] per layer, so chi (an amplitude ratio) grows by
    # sqrt(chi_1) per layer: 1.2677 for sigma_w = 2.5, sigma_b = 0 (chi_1 = 1.6070, q* = 3.9610, from
    # `chi1_at_fixed_point`); at the edge of chaos (sigma_w = 1) chi_1 = 1 and chi stops growing.
    _, chi_1 = chi1_at_fixed_point("tanh", 2.5**2, 0.0)
    assert chi_1 == pytest.approx(1.6070, abs=1e-4)
    chaotic, edge = _tanh_mlp_chi(2.5), _tanh_mlp_chi(1.0)
    growth = (chaotic[-1] / chaotic[4]) ** (1 / (len(chaotic) - 5))  # per layer, over the last 8 layers
    assert growth == pytest.approx(math.sqrt(chi_1), rel=0.01)
    assert chaotic[-1] > 15.0
    assert (edge[-1] / edge[4]) ** (1 / (len(edge) - 5)) == pytest.approx(1.0, abs=0.01)


def test_layer_moments_of_a_greedy_net_by_jvp():
    torch.manual_seed(0)
    net = GreedyNet([8, 16], 10, in_chans=3, k=1, img_size=8).double().eval()
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    layers = [Layer("input", 0, "input"), Layer("block1", 1, "block"), Layer("block2", 2, "block")]
    res = layer_moments(net, x, layers, seed=0, batch_size=40)
    assert [res[n]["dim"] for n in ("input", "block1", "block2")] == [3, 8, 16]
    assert res["input"]["chi"] == 1.0 and res["input"]["noise_power"] == pytest.approx(1.0, rel=0.1)
    assert all(1.0 <= res[n]["reff_signal"] <= res[n]["dim"] and res[n]["chi"] > 0 for n in res)
    # the JVP is the derivative: a central difference along the same dx gives the same noise power
    dx = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()
    h = 1e-6
    with torch.no_grad():
        diff = (net.forward_blocks(x + h * dx)[1] - net.forward_blocks(x - h * dx)[1]) / (2 * h)
    assert res["block2"]["noise_power"] == pytest.approx(float((diff**2).mean()), rel=1e-4)
    streamed = layer_moments(net, x, layers, seed=0, batch_size=16)  # three batches, other noise draws
    assert streamed["block2"]["signal_power"] == pytest.approx(res["block2"]["signal_power"], rel=1e-9)
