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

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy.optimize import brentq
from scipy.special import erf

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
