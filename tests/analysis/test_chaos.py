"""Mean-field maps and the edge of chaos against their closed forms, and the chaos probe on nets."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from greedy.analysis.chaos import (
    activation,
    chi1,
    chi1_at_fixed_point,
    correlation_map,
    correlation_propagation,
    eoc_curve,
    eoc_sigma_w,
    fixed_point_q,
    relu_correlation_closed_form,
    sigma_w2_b2,
    variance_map,
)
from greedy.models import GreedyNet

RELU, TANH, LINEAR = activation("relu"), activation("tanh"), activation("linear")


def test_relu_edge_of_chaos_is_sigma_w2_2_sigma_b_0_where_every_variance_is_fixed():
    assert chi1_at_fixed_point("relu", 2.0, 0.0) == (1.0, pytest.approx(1.0, abs=1e-14))
    for q in (0.1, 1.0, 37.0):  # V(q) = sigma_w^2 q / 2 = q: every q is a fixed point
        assert variance_map(q, RELU[0], 2.0, 0.0) == pytest.approx(q, rel=1e-14)
        assert fixed_point_q(RELU[0], 2.0, 0.0, q0=q) == q
        assert chi1(RELU[1], q, 2.0) == pytest.approx(1.0, rel=1e-14)  # E[relu'(u)^2] = 1/2 for any q > 0
    assert eoc_sigma_w("relu", 0.0) == pytest.approx(math.sqrt(2.0), abs=1e-9)
    # sigma_b > 0: at sigma_w^2 = 2 the variance map q + sigma_b^2 has no fixed point: no EOC (Hayou et al. 2019)
    assert math.isnan(eoc_sigma_w("relu", 0.3))
    assert fixed_point_q(RELU[0], 2.0, 0.09) == math.inf
    # ordered side: sigma_w^2 < 2 sends q to 0, chi_1 = sigma_w^2 / 2 (the limit q -> 0+)
    assert chi1_at_fixed_point("relu", 1.0, 0.0) == (0.0, pytest.approx(0.5))


def test_linear_activation_has_chi1_equal_to_sigma_w2():
    for sw2 in (0.25, 1.0, 3.0):
        for q in (0.5, 2.0):
            assert chi1(LINEAR[1], q, sw2) == pytest.approx(sw2, rel=1e-14)
    assert eoc_sigma_w("linear", 0.0) == pytest.approx(1.0, abs=1e-9)
    # a linear layer keeps correlations: C(c) = (sigma_w^2 q c + sigma_b^2) / (sigma_w^2 q + sigma_b^2)
    assert correlation_map(0.3, 2.0, LINEAR[0], 1.5, 0.5) == pytest.approx((1.5 * 2 * 0.3 + 0.5) / (1.5 * 2 + 0.5))


def test_tanh_edge_of_chaos_starts_at_sigma_w_1_and_rises_with_sigma_b():
    # q* = 0 for sigma_b = 0, sigma_w <= 1, and tanh'(0) = 1
    assert chi1(TANH[1], 0.0, 1.0) == pytest.approx(1.0, abs=1e-14)
    assert fixed_point_q(TANH[0], 0.81, 0.0) == 0.0
    sigma_bs = [0.0, 0.1, 0.3, 0.5]
    curve = eoc_curve("tanh", sigma_bs)
    assert curve[0] == pytest.approx(1.0, abs=1e-6)
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False))
    for sb, sw in zip(sigma_bs[1:], curve[1:], strict=True):  # on the curve chi_1(q*) = 1 with q* the fixed point
        q, c1 = chi1_at_fixed_point("tanh", sw * sw, sb * sb)
        assert 0 < q < 10 and variance_map(q, TANH[0], sw * sw, sb * sb) == pytest.approx(q, rel=1e-9)
        assert c1 == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("c", [-1.0, -0.7, 0.0, 0.2, 0.9, 0.999, 1.0])
def test_relu_correlation_map_is_the_arc_cosine_kernel(c):
    # Cho & Saul 2009: E[relu(u1) relu(u2)] = q / (2 pi) (sqrt(1 - c^2) + (pi - arccos c) c)
    for sw2, sb2, q in ((2.0, 0.0, 1.0), (1.3, 0.2, 0.7), (3.0, 0.05, 4.0)):
        assert correlation_map(c, q, RELU[0], sw2, sb2) == pytest.approx(
            relu_correlation_closed_form(c, sw2, sb2, q), abs=1e-12)
    assert relu_correlation_closed_form(0.0, 2.0, 0.0, 1.0) == pytest.approx(1 / math.pi)  # c = 0 -> 1/pi


def test_correlation_map_fixes_c_1_and_odd_activations_fix_c_0():
    for name in ("tanh", "elu", "silu", "gelu", "selu"):
        assert correlation_map(1.0, 0.8, activation(name)[0], 1.7, 0.1) == pytest.approx(1.0, abs=1e-12)
    assert correlation_map(0.0, 0.8, TANH[0], 1.7, 0.0) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="choose from"):
        activation("softplus")


def test_sigma_w2_is_fan_in_times_weight_variance():
    conv = nn.Conv2d(4, 6, 3, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(6 * 4 * 9).reshape(6, 4, 3, 3) % 2 * 2.0 - 1.0)  # +-1: variance 1
        conv.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
    assert sigma_w2_b2(conv) == (pytest.approx(36.0), pytest.approx(1.0))  # fan-in 4 x 3 x 3
    assert sigma_w2_b2(nn.Linear(5, 3, bias=False))[1] == 0.0


def test_measured_correlations_of_a_wide_random_relu_net_follow_the_map():
    # No BatchNorm, weights N(0, 2 / fan_in) (the ReLU EOC), biases N(0, 0.01): the one-step map predicts the
    # pre-activation correlation of input pairs to within the finite-width fluctuation.
    torch.manual_seed(0)
    net = GreedyNet([256, 256, 256], 10, in_chans=4, k=1, img_size=6, batchnorm=False).eval()
    for block in net.blocks:
        nn.init.normal_(block.conv.weight, std=math.sqrt(2.0 / block.conv.weight[0].numel()))
        nn.init.normal_(block.conv.bias, std=0.1)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(24, 4, 6, 6, generator=gen)
    xa, xb = base, 0.6 * base + 0.8 * torch.randn(24, 4, 6, 6, generator=gen)
    rows = correlation_propagation(net, xa, xb)
    assert [r["depth"] for r in rows] == [0, 1, 2, 3] and rows[1]["activation"] == "relu"
    assert not rows[1]["batchnorm"] and rows[1]["sigma_w2"] == pytest.approx(2.0, rel=0.05)
    for r in rows[1:]:
        assert r["c_pred"] == pytest.approx(r["c"], abs=0.03)
    assert rows[3]["c"] > rows[1]["c"]  # ReLU nets drive pairs together with depth
    np.testing.assert_allclose(rows[0]["c"], float(torch.nn.functional.cosine_similarity(
        xa.flatten(1).double(), xb.flatten(1).double()).mean()), rtol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "elu", "selu", "silu", "gelu"])
def test_gaussian_expectations_match_adaptive_quadrature(name):
    from scipy.integrate import quad

    phi, dphi = activation(name)
    q = 2.3

    def expect(f):
        density = lambda z: f(np.array(math.sqrt(q) * z)) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        return sum(quad(density, lo, hi, epsabs=1e-14, epsrel=1e-13)[0] for lo, hi in ((-40, 0), (0, 40)))

    assert variance_map(q, phi, 1.5, 0.2) == pytest.approx(1.5 * expect(lambda u: phi(u) ** 2) + 0.2, abs=1e-12)
    assert chi1(dphi, q, 1.5) == pytest.approx(1.5 * expect(lambda u: dphi(u) ** 2), abs=1e-12)
