"""Linear regions along a line against Hanin & Rolnick's one-hidden-layer expectation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from greedy.analysis.regions import line_regions, relu_pattern_fn


def _one_layer_net(width: int, seed: int, inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU(inplace=inplace), nn.Linear(width, 1))
    with torch.no_grad():
        net[0].weight.normal_()
        net[0].bias.normal_()
    return net


def test_one_hidden_layer_expected_regions() -> None:
    # Unit i switches at x = -b_i / w_i, a standard Cauchy variable: P(|x| <= a) = (2/pi) arctan(a),
    # so E[regions on [-a, a]] = 1 + N (2/pi) arctan(a) = 51 for N = 100, a = 1.
    width, a, seeds = 100, 1.0, 40
    counts = []
    for seed in range(seeds):
        net = _one_layer_net(width, seed)
        res = line_regions(relu_pattern_fn(net), torch.tensor([-a]), torch.tensor([a]), n_points=10000)
        w, b = net[0].weight[:, 0].detach().numpy(), net[0].bias.detach().numpy()
        exact = int(np.sum(np.abs(-b / w) <= a))
        assert res["n_flips"] == exact  # every unit boundary in the segment is seen once
        assert exact - 2 <= res["n_changes"] <= exact  # two boundaries closer than the grid merge
        assert res["n_neurons"] == width and res["length"] == pytest.approx(2 * a)
        counts.append(res["n_regions"])
    expected = 1 + width * (2 / math.pi) * math.atan(a)
    assert expected == pytest.approx(51.0)
    # per-seed std is sqrt(100 * 0.5 * 0.5) = 5, so the mean over 40 seeds has std 0.8
    assert np.mean(counts) == pytest.approx(expected, abs=3.0)


def test_inplace_relu_gives_the_same_pattern_and_hooks_are_removed() -> None:
    x = torch.linspace(-2, 2, 101)[:, None]
    plain, inplace = _one_layer_net(30, 0), _one_layer_net(30, 0, inplace=True)
    p_plain, p_inplace = relu_pattern_fn(plain)(x), relu_pattern_fn(inplace)(x)
    expected = (plain[0](x) > 0).detach()
    assert torch.equal(p_plain, expected) and torch.equal(p_inplace, expected)
    assert not inplace[1]._forward_pre_hooks and not plain[1]._forward_pre_hooks


def test_pattern_of_a_cnn_with_reused_relu() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.c2(self.relu(self.c1(x)))).sum(dim=(1, 2, 3))

    pat = relu_pattern_fn(Net())(torch.randn(4, 1, 5, 5))
    assert pat.shape == (4, 3 * 25 + 2 * 25) and pat.dtype == torch.bool
    res = line_regions(relu_pattern_fn(Net()), torch.zeros(1, 5, 5), torch.ones(1, 5, 5), n_points=500,
                       batch_size=128)
    assert res["n_neurons"] == 125 and res["length"] == pytest.approx(5.0)


def test_single_boundary_distance_and_normalisation() -> None:
    c, length = 0.3, 1.0
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(-c)
    res = line_regions(relu_pattern_fn(net), np.array([0.0]), np.array([length]), n_points=10001,
                       batch_size=999)
    assert res["n_regions"] == 2 and res["n_changes"] == 1 and res["n_flips"] == 1
    # uniform points on [0, L]: mean distance to c is (c^2 + (L - c)^2) / (2L)
    assert res["mean_boundary_distance"] == pytest.approx((c**2 + (length - c) ** 2) / (2 * length), abs=1e-3)
    assert res["regions_per_length_per_neuron"] == pytest.approx(2.0)
    assert res["boundaries_per_length_per_neuron"] == pytest.approx(1.0)
    none = line_regions(relu_pattern_fn(net), np.array([0.5]), np.array([0.9]), n_points=100)
    assert none["n_regions"] == 1 and none["mean_boundary_distance"] == math.inf
