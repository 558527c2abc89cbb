"""Linear mode connectivity (Nguyen et al. 2019; Frankle et al. 2020): known barriers along straight lines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedy.analysis.connectivity import barrier, interpolate_state, linear_path, path_summary

ALPHAS = torch.linspace(0, 1, 11).tolist()


def _mse(x: torch.Tensor, t: torch.Tensor):
    return lambda m: {"loss": float(F.mse_loss(m(x).squeeze(-1), t))}


def test_a_network_and_itself_have_a_flat_path_and_no_barrier():
    """theta(a) = (1 - a) theta + a theta = theta at every a (torch.lerp is exact there), BatchNorm statistics are
    recomputed from the same inputs each time: the loss is the same number at every point, the barrier 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    x, t = torch.randn(128, 6), torch.randn(128)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    curves = linear_path(net, net.state_dict(), net.state_dict(), ALPHAS, _mse(x, t), bn_inputs=x.split(32))
    assert len(set(curves["loss"])) == 1 and curves["alpha"] == ALPHAS
    height, _ = barrier(curves["loss"], curves["alpha"])
    assert abs(height) < 1e-12
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model is not touched


def test_convex_loss_never_rises_above_the_chord():
    """Logistic regression: the cross-entropy is convex in (W, b), so along any straight line it stays at or below
    the chord; two different fits (different data subsets, different starts) have barrier 0 (at the endpoints)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=gen)
    y = (x @ torch.randn(5, 3, generator=gen)).argmax(1)
    fits = []
    for seed, rows in ((0, slice(0, 150)), (1, slice(150, 300))):
        torch.manual_seed(seed)
        model = nn.Linear(5, 3)
        opt = torch.optim.LBFGS(model.parameters(), max_iter=50)

        def closure(m=model, o=opt, r=rows):
            o.zero_grad()
            loss = F.cross_entropy(m(x[r]), y[r]) + 1e-2 * m.weight.square().sum()
            loss.backward()
            return loss
        opt.step(closure)
        fits.append(model)
    curves = linear_path(fits[0], fits[0].state_dict(), fits[1].state_dict(), ALPHAS,
                         lambda m: {"loss": float(F.cross_entropy(m(x), y))})
    a, v = torch.tensor(ALPHAS, dtype=torch.float64), torch.tensor(curves["loss"], dtype=torch.float64)
    gap = v - ((1 - a) * v[0] + a * v[-1])
    assert v[0] != v[-1] and bool((gap[1:-1] < 0).all())  # strictly below the chord inside
    assert path_summary(curves, ["loss"]) == {"loss_barrier": pytest.approx(0.0, abs=1e-12),
                                              "loss_barrier_alpha": 0.0}


def test_swapped_hidden_units_give_a_known_positive_barrier():
    """f(x) = relu(w1 x) v1 + relu(w2 x) v2 with (w, v) = ((1, -1), (1, 1)) computes |x|; swapping the two hidden
    units computes |x| too, so both ends fit t = |x| with loss 0. On the line w(a) = (1 - 2a, 2a - 1), so
    f_a(x) = |1 - 2a| |x| and the mean squared error is (1 - |1 - 2a|)^2 mean(x^2): the barrier is mean(x^2), at
    a = 1/2 (where both hidden units are dead)."""
    x = torch.linspace(-2, 2, 101)[:, None]
    t = x.abs().squeeze(1)

    def mlp(w: list[float]) -> nn.Sequential:
        net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        net[0].weight.data = torch.tensor(w)[:, None]
        net[2].weight.data = torch.ones(1, 2)
        return net

    a_net, b_net = mlp([1.0, -1.0]), mlp([-1.0, 1.0])
    curves = linear_path(a_net, a_net.state_dict(), b_net.state_dict(), ALPHAS, _mse(x, t))
    expected = [(1 - abs(1 - 2 * a)) ** 2 * float(x.square().mean()) for a in ALPHAS]
    assert curves["loss"] == pytest.approx(expected, abs=1e-6)
    height, where = barrier(curves["loss"], curves["alpha"])
    assert height == pytest.approx(float(x.square().mean()), rel=1e-6) and where == 0.5


def test_interpolation_checks_and_keeps_integer_buffers():
    bn_a, bn_b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    bn_b.weight.data.fill_(3.0)
    bn_b.num_batches_tracked.fill_(7)
    mid = interpolate_state(bn_a.state_dict(), bn_b.state_dict(), 0.5)
    assert torch.equal(mid["weight"], torch.full((3,), 2.0)) and int(mid["num_batches_tracked"]) == 0
    with pytest.raises(ValueError, match="shapes"):
        interpolate_state(bn_a.state_dict(), nn.BatchNorm1d(4).state_dict(), 0.5)
    with pytest.raises(ValueError, match="keys"):
        interpolate_state(bn_a.state_dict(), nn.Linear(3, 3).state_dict(), 0.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        barrier([1.0, 2.0], [0.0, 0.5])
