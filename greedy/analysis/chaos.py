"""Mean-field signal propagation and the edge of chaos (Poole et al. 2016, Schoenholz et al. 2017, Hayou et al. 2019).

In a wide random net with weights W_ij ~ N(0, sigma_w^2 / fan_in) and biases b_i ~ N(0, sigma_b^2), the
pre-activations of one input are Gaussian with variance q^l, and those of two inputs have correlation c^l:

- variance map  q -> V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2, z ~ N(0, 1), with fixed point q*;
- correlation map  c -> C(c) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / V(q), (u1, u2) ~ N(0, q [[1, c], [c, 1]])
  (at the fixed point V(q*) = q*, Poole et al.'s form);
- chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2], the slope of C at c = 1: chi_1 < 1 ordered (all inputs converge to one
  point, c -> 1), chi_1 > 1 chaotic (nearby inputs decorrelate);
- the edge of chaos (EOC): the (sigma_b, sigma_w) with chi_1 = 1 and a finite q* (Hayou, Doucet & Rousseau, *On the
  Impact of the Activation Function on Deep Neural Networks Training*, ICML 2019). For ReLU it is the single point
  (0, sqrt 2) (for sigma_b > 0 the variance explodes there); for tanh a curve starting at (0, 1).

Gaussian expectations are Gauss-Legendre quadratures on pieces where the integrand is smooth: each half-line
in one dimension (activations have their kink at 0), and in two dimensions (the correlation map) polar
coordinates with the angle split at the kinks of phi(u1) phi(u2); they agree with Cho & Saul's closed form for
ReLU and with adaptive quadrature (scipy's quad) for the others to about 1e-12.

BatchNorm changes the picture: it renormalizes every channel to variance gamma^2 after the conv, so q^l is set
by BN, not by V, and sigma_w^2 drops out; what is left of the map is its shape at the BN-fixed q, with BN's batch
centering on top (which the map does not model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from numpy.polynomial.legendre import leggauss
from scipy.optimize import brentq
from scipy.special import erf
from torch import nn

from greedy.analysis.context import Context, entry, family, seeded_pairs
from greedy.analysis.representations import Layer
from greedy.models import GreedyNet

Fn = Callable[[np.ndarray], np.ndarray]
NODES = 64
Q_MAX = 1e8  # a variance fixed point beyond this is taken as infinite (the variance explodes)
Z_MAX = 12.0  # quadrature range of a standard Gaussian (per half-line, and of the radius in 2-D)
Q_EOC = 1e4  # an EOC point needs q* below this: at a root where q* blows up (ReLU, sigma_b > 0) there is none

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


ACTIVATIONS: dict[str, tuple[Fn, Fn]] = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "linear": (lambda x: x, np.ones_like),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))), lambda x: np.where(x > 0, 1.0, np.exp(
        np.minimum(x, 0.0)))),
    "selu": (lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
             lambda x: _SELU_SCALE * np.where(x > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(x, 0.0)))),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x)))),
    "gelu": (lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1.0 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)),
}


def activation(name: str) -> tuple[Fn, Fn]:
    """(phi, phi') of a named activation; ValueError naming the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@lru_cache(maxsize=8)
def _half_line(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, Z_MAX] (beyond it a standard Gaussian has mass < 1e-32)."""
    x, w = leggauss(n)
    return (x + 1) * Z_MAX / 2, w * Z_MAX / 2


@lru_cache(maxsize=8)
def _gauss(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E[f(z)], z ~ N(0, 1): n-point Gauss-Legendre on each half-line, so a kink of f at 0
    (ReLU, ELU, SELU) costs no accuracy; converges spectrally for the activations here."""
    t, w = _half_line(n)
    dens = w * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    return np.concatenate([-t, t]), np.concatenate([dens, dens])


def gaussian_mean(f: Fn, q: float, n: int = NODES) -> float:
    """E[f(sqrt(q) z)], z ~ N(0, 1) (q >= 0, a variance)."""
    z, w = _gauss(n)
    return float(w @ f(math.sqrt(max(q, 0.0)) * z))


def variance_map(q: float, phi: Fn, sigma_w2: float, sigma_b2: float, n: int = NODES) -> float:
    """V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (Poole et al. 2016, eq. 3)."""
    return sigma_w2 * gaussian_mean(lambda u: phi(u) ** 2, q, n) + sigma_b2


def _polar_rule(c: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes (z1, z2) and weights of E[f(z1, z2)], z ~ N(0, I_2), in polar coordinates: Gauss-Legendre in the
    radius on [0, Z_MAX] times Gauss-Legendre in the angle on each arc between the lines z1 = 0 and
    c z1 + s z2 = 0 (s = sqrt(1 - c^2)), where phi(u1) phi(u2) has its kinks: the integrand is smooth on every
    piece (exact for ReLU's, which is r^2 times a function of the angle)."""
    rho, w_rho = _half_line(n)
    x, wx = leggauss(n // 2)
    a = math.atan2(-c, math.sqrt(max(1.0 - c * c, 0.0))) % (2 * math.pi)
    cuts = sorted({0.0, math.pi / 2, 3 * math.pi / 2, a, (a + math.pi) % (2 * math.pi), 2 * math.pi})
    arcs = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True) if hi - lo > 1e-15]
    theta = np.concatenate([(hi - lo) / 2 * x + (hi + lo) / 2 for lo, hi in arcs])
    w_theta = np.concatenate([wx * (hi - lo) / 2 for lo, hi in arcs])
    z1, z2 = rho[:, None] * np.cos(theta)[None], rho[:, None] * np.sin(theta)[None]
    radial = w_rho * rho * np.exp(-0.5 * rho * rho)
    return z1, z2, radial[:, None] * w_theta[None] / (2 * math.pi)


def correlation_map(c: float, q: float, phi: Fn, sigma_w2: float, sigma_b2: float, n: int = NODES) -> float:
    """C(c) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / V(q), u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1-c^2) z2).

    At the variance fixed point q = q* this is Poole et al.'s correlation map (their eq. 5). c in [-1, 1]. The
    2-D expectation uses `_polar_rule` (n radial nodes, n / 2 per angular arc).
    """
    c = float(np.clip(c, -1.0, 1.0))
    z1, z2, w = _polar_rule(c, n)
    s = math.sqrt(max(q, 0.0))
    cross = float(np.sum(w * phi(s * z1) * phi(s * (c * z1 + math.sqrt(1.0 - c * c) * z2))))
    return (sigma_w2 * cross + sigma_b2) / variance_map(q, phi, sigma_w2, sigma_b2, n)


def chi1(dphi: Fn, q: float, sigma_w2: float, n: int = NODES) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q) z)^2] (Poole et al. 2016; Schoenholz et al. 2017, eq. 5), at q = q*."""
    return sigma_w2 * gaussian_mean(lambda u: dphi(u) ** 2, q, n)


def fixed_point_q(phi: Fn, sigma_w2: float, sigma_b2: float, q0: float = 1.0, n: int = NODES) -> float:
    """The fixed point q* that the variance map reaches from q0: inf if the variance explodes (q* > Q_MAX).

    V is increasing in q for the usual activations, so the orbit from q0 moves monotonically to the nearest fixed
    point on the side sign(V(q0) - q0); it is found by bracketing and Brent's method. When V(q0) = q0 (ReLU at
    sigma_w^2 = 2, sigma_b = 0, or linear at sigma_w = 1: every q is fixed) q0 is returned.
    """
    g = lambda q: variance_map(q, phi, sigma_w2, sigma_b2, n) - q  # noqa: E731
    g0 = g(q0)
    if abs(g0) <= 1e-12 * max(q0, 1.0):
        return q0
    if g0 > 0:
        hi = q0 * 2
        while g(hi) > 0:
            if hi > Q_MAX:
                return math.inf
            hi *= 2
        return brentq(g, hi / 2, hi, xtol=1e-12, rtol=1e-12)
    lo = q0 / 2
    while g(lo) < 0:
        if lo < 1e-12:
            return 0.0
        lo /= 2
    return brentq(g, lo, lo * 2, xtol=1e-14, rtol=1e-12)


def chi1_at_fixed_point(name: str, sigma_w2: float, sigma_b2: float, n: int = NODES) -> tuple[float, float]:
    """(q*, chi_1 at q*) of a named activation (q* from q0 = 1).

    q* = 0 is taken as the limit q -> 0+ (ReLU: 1/2 sigma_w^2, not phi'(0) = 0) and an infinite q* (the variance
    explodes) as q = Q_MAX, where chi_1 is its large-q limit (ReLU: sigma_w^2 / 2 > 1).
    """
    phi, dphi = activation(name)
    q = fixed_point_q(phi, sigma_w2, sigma_b2, n=n)
    return q, chi1(dphi, min(max(q, 1e-12), Q_MAX), sigma_w2, n)


def eoc_sigma_w(name: str, sigma_b: float, lo: float = 0.05, hi: float = 8.0, n: int = NODES) -> float:
    """sigma_w on the edge of chaos at sigma_b (chi_1(q*) = 1 with q* <= Q_EOC), nan where there is none.

    The ordered-to-chaotic crossing: the first sign change of chi_1(q*(sigma_w)) - 1 on a geometric grid of
    sigma_w in [lo, hi] (an infinite q* counting as chaotic; bounded activations like tanh return to chi_1 < 1 at
    large sigma_w), refined by Brent's method.
    """
    phi, dphi = activation(name)

    def f(sw: float) -> float:
        q = fixed_point_q(phi, sw * sw, sigma_b**2, n=n)
        return chi1(dphi, q, sw * sw, n) - 1.0 if math.isfinite(q) else 1.0

    grid = np.geomspace(lo, hi, 48)
    values = [f(sw) for sw in grid]
    cross = [i for i in range(len(grid) - 1) if values[i] < 0 <= values[i + 1]]
    if not cross:
        return math.nan
    sw = brentq(f, grid[cross[0]], grid[cross[0] + 1], xtol=1e-12)
    q = fixed_point_q(phi, sw * sw, sigma_b**2, n=n)
    return sw if q <= Q_EOC and abs(f(sw)) < 1e-6 else math.nan


def eoc_curve(name: str, sigma_bs: np.ndarray | list[float], n: int = NODES) -> list[float]:
    """sigma_w on the EOC for each sigma_b (nan where the activation has no EOC point there)."""
    return [eoc_sigma_w(name, float(sb), n=n) for sb in sigma_bs]


def relu_correlation_closed_form(c: float, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """ReLU's correlation map from the arc-cosine kernel of degree 1 (Cho & Saul 2009):
    E[relu(u1) relu(u2)] = q / (2 pi) (sqrt(1 - c^2) + (pi - arccos c) c), E[relu(u)^2] = q / 2."""
    cross = q / (2 * math.pi) * (math.sqrt(max(1.0 - c * c, 0.0)) + (math.pi - math.acos(c)) * c)
    return (sigma_w2 * cross + sigma_b2) / (sigma_w2 * q / 2 + sigma_b2)


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

_ACTIVATION_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.ELU: "elu", nn.SELU: "selu",
                                        nn.SiLU: "silu", nn.GELU: "gelu", nn.Identity: "linear"}


def _plain_layer(block: nn.Module) -> tuple[nn.Module, nn.Module, str, bool] | None:
    """(weight layer, activation module, activation name, batchnorm) of a block that is one conv/linear layer
    followed by BatchNorm and an activation (a mean-field layer); None for others (residual blocks, several
    layers: no single-layer map)."""
    weights = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    acts = [m for m in block.modules() if type(m) in _ACTIVATION_MODULES and type(m) is not nn.Identity]
    if len(weights) != 1 or len(acts) != 1:
        return None
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    return weights[0], acts[0], _ACTIVATION_MODULES[type(acts[0])], bn


def sigma_w2_b2(m: nn.Module) -> tuple[float, float]:
    """Mean-field (sigma_w^2, sigma_b^2) of a conv/linear layer: fan_in x Var(W) (conv fan-in = in_channels /
    groups x kernel area) and Var(b), 0 without a bias."""
    w = m.weight.detach().double()
    fan_in = w[0].numel()
    sb2 = float(m.bias.detach().double().var(unbiased=False)) if m.bias is not None else 0.0
    return fan_in * float(w.var(unbiased=False)), sb2


def _pair_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: correlation <a, b> / (|a| |b|) over all units (flattened maps), and q = (|a|^2 + |b|^2) / (2 D)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    na, nb = (a * a).sum(1), (b * b).sum(1)
    return (a * b).sum(1) / (na * nb).sqrt().clamp(min=1e-300), (na + nb) / (2 * a.shape[1])


@torch.no_grad()
def correlation_propagation(net: GreedyNet, xa: torch.Tensor, xb: torch.Tensor) -> list[dict[str, Any]]:
    """Measured pre-activation correlation of input pairs (xa[i], xb[i]) by block, and its one-step mean-field
    prediction from the layer before (Poole et al. 2016): c_pred^l = C_l(c^{l-1}; q^{l-1}) with block l's
    (sigma_w^2, sigma_b^2) and the previous layer's activation (identity on the input).

    Returns one dict per depth (0: the input): c (mean over pairs), q, and for plain blocks activation,
    sigma_w2, sigma_b2, batchnorm, q_star, chi1 (at the layer's own fixed point), c_pred.
    """
    net.eval()
    device = next(net.parameters()).device
    captured: dict[int, list[torch.Tensor]] = {}
    handles, plain = [], {}
    for j, block in enumerate(net.blocks):
        found = _plain_layer(block)
        if found is not None:
            plain[j + 1] = found
            handles.append(found[1].register_forward_pre_hook(
                lambda _m, inp, d=j + 1: captured.setdefault(d, []).append(inp[0].to("cpu", copy=True))))
    try:
        for x in (xa, xb):
            net.forward_blocks(x.to(device))
    finally:
        for h in handles:
            h.remove()
    rows = []
    c_prev, q_prev = _pair_stats(xa, xb)
    phi_prev = activation("linear")[0]
    rows.append({"depth": 0, "c": float(c_prev.mean()), "q": float(q_prev.mean())})
    for d in range(1, net.num_stages + 1):
        if d not in plain:
            rows.append({"depth": d, "c": None, "q": None})
            c_prev = None
            continue
        weight, _, act, bn = plain[d]
        sw2, sb2 = sigma_w2_b2(weight)
        c, q = _pair_stats(*captured[d])
        pred = None
        if c_prev is not None:
            pred = float(np.mean([correlation_map(float(ci), float(qi), phi_prev, sw2, sb2)
                                  for ci, qi in zip(c_prev, q_prev, strict=True)]))
        q_star, chi1 = chi1_at_fixed_point(act, sw2, sb2)
        rows.append({"depth": d, "c": float(c.mean()), "q": float(q.mean()), "c_pred": pred, "activation": act,
                     "sigma_w2": sw2, "sigma_b2": sb2, "batchnorm": bn, "q_star": q_star, "chi1": chi1})
        c_prev, q_prev, phi_prev = c, q, activation(act)[0]
    return rows


@family("chaos", at_init=True)
def probe_chaos(ctx: Context) -> dict[str, Any]:
    """Edge of chaos (Hayou et al. 2019; Poole et al. 2016): each block's (sigma_b, sigma_w) and chi_1, and the
    measured propagation of input-pair correlations against the mean-field map, at initialization and trained."""
    s, x = ctx.settings, ctx.test.x
    pairs = seeded_pairs(x.shape[0], min(s.chaos_pairs, x.shape[0]), s.seed)
    xa, xb = x[[i for i, _ in pairs]], x[[j for _, j in pairs]]
    results = {prefix: correlation_propagation(net, xa, xb) for prefix, net in ctx.nets()}
    layers = []
    for d in range(len(results[""])):
        la = Layer("input", 0, "input") if d == 0 else Layer(f"block{d}", d, "block")
        layers.append(entry(la, **{f"{prefix}{k}": v for prefix, res in results.items()
                                    for k, v in res[d].items() if k != "depth"}))
    acts = sorted({e[k] for e in layers for k in ("activation", "init_activation") if e.get(k)})
    sbs = [e[k] for e in layers for k in ("sigma_b2", "init_sigma_b2") if e.get(k) is not None]
    grid = np.linspace(0.0, max(1.0, 1.2 * math.sqrt(max(sbs, default=0.0))), s.chaos_eoc_points)
    eoc = {a: {"sigma_b": grid.tolist(), "sigma_w": eoc_curve(a, grid)} for a in acts if a in ACTIVATIONS}
    return {"settings": {**s.pick("chaos_pairs", "chaos_eoc_points"), "pairs": len(pairs),
                         "init": ctx.init_net is not None},
            "layers": layers, "eoc": eoc,
            "notes": "per block: sigma_w2 = fan_in x Var(W), sigma_b2 = Var(b) (0 without a bias, as under "
                     "BatchNorm), chi1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at the layer's own variance fixed point "
                     "(< 1 ordered, > 1 chaotic, = 1 edge of chaos; null where q* is infinite); c = mean "
                     "correlation over input pairs of the pre-activations (the input of the block's activation, "
                     "whole maps flattened), c_pred = the mean-field correlation map applied to the layer before's "
                     "measured (q, c). BatchNorm renormalizes every channel's variance (q is set by BN, not by the "
                     "variance map) and centers over the batch, which the map does not model: with BN, c_pred is "
                     "the map's shape at the measured q only. Residual or multi-layer blocks get no map (null). "
                     "init_*: the net the run started from"}
