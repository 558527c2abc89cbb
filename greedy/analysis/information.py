"""Mutual information I(X;T) in noisy networks by sample propagation (SP; Goldfeld et al., ICML 2019).

A noisy layer outputs T = S + Z with S = f(T_prev) and Z ~ N(0, beta^2 I_d) independent. With S taking
the n sampled values s_1..s_n (equally weighted), T is the Gaussian mixture g = (1/n) sum_i N(s_i, beta^2 I)
and I(X;T) = h(T) - h(T|X). When S is a deterministic function of X (the first noisy layer, or a clean
network with noise added to the probed layer), h(T|X) = d/2 ln(2 pi e beta^2) exactly.

h(g) is estimated by Monte Carlo: t = s_i + beta z drawn with every component used equally often, and
h = mean(-ln g(t)) with ln g computed by logsumexp. Writing ||t - s_i||^2 = beta^2 ||z||^2, the term
||z||^2/2 in -ln g(t) has known mean d/2; it is replaced by that mean (a zero-mean control variate), which
leaves the estimator unbiased, removes most of its variance, and bounds the mixture part in [0, ln n]:

    h(g) = d/2 ln(2 pi e beta^2) + ln n - E[ln sum_j exp(-(||t - s_j||^2 - ||t - s_i||^2) / (2 beta^2))].

The error of SP grows quickly with d (the sample complexity is exponential in d), so layers are reduced
to a few dimensions first (`reduce_dim`), and every result records the dimension used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from greedy.analysis._arrays import ArrayLike, to_tensor

LN2 = math.log(2.0)


def gaussian_entropy(d: int, beta: float) -> float:
    """Differential entropy in nats of N(0, beta^2 I_d): d/2 ln(2 pi e beta^2)."""
    return 0.5 * d * math.log(2.0 * math.pi * math.e * beta**2)


def _mixture_log_excess(
    centers: torch.Tensor, beta: float, n_draws: int, generator: torch.Generator, chunk: int
) -> torch.Tensor:
    """Draw t from the equal-weight mixture and return ln sum_j exp(-(|t-s_j|^2 - |t-s_i|^2)/(2 beta^2))."""
    n, _ = centers.shape
    comp = torch.randperm(n, generator=generator)[torch.arange(n_draws) % n]  # every component equally often
    sq = (centers**2).sum(dim=1)
    out = torch.empty(n_draws, dtype=centers.dtype)
    for start in range(0, n_draws, chunk):
        ci = comp[start:start + chunk]
        t = centers[ci] + beta * torch.randn(ci.numel(), centers.shape[1], generator=generator,
                                             dtype=centers.dtype)
        # |t - s_j|^2 - |t - s_i|^2 = |s_j|^2 - |s_i|^2 - 2 t.(s_j - s_i)
        diff = sq[None, :] - sq[ci][:, None] - 2.0 * (t @ centers.T - (t * centers[ci]).sum(1, keepdim=True))
        out[start:start + chunk] = torch.logsumexp(-diff / (2.0 * beta**2), dim=1)
    return out


def gaussian_mixture_entropy(
    centers: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0, chunk: int | None = None
) -> dict[str, float]:
    """Monte-Carlo entropy in nats of (1/n) sum_i N(centers_i, beta^2 I), with its (iid) standard error.

    Draws are processed `chunk` at a time (default: chunk * n <= 2^23, about 64 MiB of distances).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    c = to_tensor(centers)
    c = c.reshape(c.shape[0], -1)
    n, d = c.shape
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    gen = torch.Generator().manual_seed(seed)
    chunk = chunk or max(1, min(4096, 2**23 // n))
    excess = _mixture_log_excess(c, beta, mc_samples, gen, chunk)
    h = gaussian_entropy(d, beta) + math.log(n) - float(excess.mean())
    stderr = float(excess.std()) / math.sqrt(mc_samples) if mc_samples > 1 else float("nan")
    return {"entropy": h, "stderr": stderr}


def _mi_result(h_t: float, h_cond: float, stderr: float, **settings) -> dict[str, float]:
    """I = h(T) - h(T|X) in nats and bits, with its parts and the settings that produced it."""
    mi = h_t - h_cond
    return {"mi_nats": mi, "mi_bits": mi / LN2, "h_t": h_t, "h_t_given_x": h_cond, "stderr_nats": stderr,
            **settings}


def sp_mutual_information(
    clean_outputs: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """SP estimate of I(X; f(X) + Z), Z ~ N(0, beta^2 I), from the clean outputs f(x_i) of n samples of X.

    Returns mi_nats, mi_bits, h_t, h_t_given_x (exact), stderr_nats (Monte-Carlo), dim, n, beta, mc_samples.
    """
    c = to_tensor(clean_outputs)
    c = c.reshape(c.shape[0], -1)
    n, d = c.shape
    h_t = gaussian_mixture_entropy(c, beta, mc_samples=mc_samples, seed=seed)
    h_cond = gaussian_entropy(d, beta)
    return _mi_result(h_t["entropy"], h_cond, h_t["stderr"], dim=d, n=n, beta=beta, mc_samples=mc_samples)


def sp_mutual_information_noisy(
    outputs: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """SP estimate of I(X;T), T = S + Z, from n x r x d samples of S (r noisy forward passes per input).

    For layers after the first noisy one S is random given X: h(T|X) is then the average over inputs of
    the SP entropy of the r-component mixture of that input, and h(T) that of all n*r components.
    Monte-Carlo budget: mc_samples for h(T) and max(mc_samples // n, r) per input for h(T|X).
    """
    s = to_tensor(outputs)
    if s.ndim < 3:
        raise ValueError(f"expected n x r x d samples, got shape {tuple(s.shape)}")
    s = s.reshape(s.shape[0], s.shape[1], -1)
    n, r, d = s.shape
    h_t = gaussian_mixture_entropy(s.reshape(n * r, d), beta, mc_samples=mc_samples, seed=seed)
    per_input = max(mc_samples // n, r)
    conds = [
        gaussian_mixture_entropy(s[i], beta, mc_samples=per_input, seed=seed + 1 + i) for i in range(n)
    ]
    h_cond = float(np.mean([c["entropy"] for c in conds]))
    cond_err = math.sqrt(sum(c["stderr"] ** 2 for c in conds)) / n if r > 1 else 0.0
    stderr = math.sqrt(h_t["stderr"] ** 2 + cond_err**2)
    return _mi_result(h_t["entropy"], h_cond, stderr, dim=d, n=n, beta=beta, mc_samples=mc_samples)


def reduce_dim(X: ArrayLike, d: int, method: str = "pca") -> torch.Tensor:
    """Reduce N x ... features to at most d dimensions by "pca" (top principal components) or "pool".

    "pool" averages: an N x C x H x W map is first average-pooled spatially to the largest s x s with
    C*s*s <= d, then (as any N x D input) adaptive-average-pooled over consecutive features down to d.
    Features with at most d dimensions are returned flattened and unchanged.
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    x = to_tensor(X)
    if method == "pool" and x.ndim == 4 and x[0].numel() > d:
        c, h, w = x.shape[1:]
        side = int(math.isqrt(max(d // c, 0)))
        if side >= 1 and side < max(h, w):
            x = F.adaptive_avg_pool2d(x, (min(side, h), min(side, w)))
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] <= d:
        return x
    if method == "pca":
        xc = x - x.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(xc, full_matrices=False)
        return xc @ vh[:d].T
    if method == "pool":
        return F.adaptive_avg_pool1d(x[:, None, :], d)[:, 0, :]
    raise ValueError(f"method must be 'pca' or 'pool', got {method!r}")


def sp_mutual_information_layers(
    layer_outputs: Sequence[ArrayLike],
    beta: float,
    mc_samples: int = 10000,
    seed: int = 0,
    max_dim: int | None = None,
    method: str = "pca",
    samples_per_input: bool = False,
) -> list[dict[str, float]]:
    """SP estimate of I(X;T_l) for every layer l from its pre-noise outputs S_l (one entry per layer).

    Default: entries are N x ... deterministic outputs f_l(x_i) (h(T|X) exact). With samples_per_input,
    entries are N x R x ... : R noisy forward passes per input (noise injected at every earlier layer).
    With max_dim set, every layer is first reduced to at most max_dim dimensions by `reduce_dim` (on all
    samples together). Each result carries its layer index and the dimension used.
    """
    results = []
    for layer, out in enumerate(layer_outputs):
        t = to_tensor(out)
        n = t.shape[0]
        r = t.shape[1] if samples_per_input else 1
        flat = t.reshape(n * r, *t.shape[(2 if samples_per_input else 1):])
        flat = reduce_dim(flat, max_dim, method=method) if max_dim is not None else flat.reshape(n * r, -1)
        if samples_per_input:
            res = sp_mutual_information_noisy(flat.reshape(n, r, -1), beta, mc_samples=mc_samples,
                                              seed=seed + layer)
        else:
            res = sp_mutual_information(flat, beta, mc_samples=mc_samples, seed=seed + layer)
        res["layer"] = layer
        results.append(res)
    return results
