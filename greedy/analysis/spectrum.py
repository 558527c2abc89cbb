"""Heavy-tailed weight spectra (Martin & Mahoney): ESD of W^T W / N and its power-law exponent alpha.

The power law p(x) ~ x^{-alpha} for x >= x_min is fitted to the largest eigenvalues by maximum likelihood,
alpha = 1 + n / sum_i ln(x_i / x_min), with x_min the candidate (every eigenvalue but the largest) whose
fit has the smallest Kolmogorov-Smirnov distance to the tail (Clauset, Shalizi & Newman 2009), as in the
`powerlaw` package and weightwatcher. Conv weights (out, in, kh, kw) follow weightwatcher's default
(pool=True): the kh*kw slices W[:, :, i, j] (out x in) are separate matrices whose eigenvalues are pooled
into one ESD; conv="flatten" instead uses the single out x (in*kh*kw) matrix.
"""

from __future__ import annotations

import numpy as np

from greedy.analysis._arrays import ArrayLike, to_numpy


def weight_matrices(W: ArrayLike, conv: str = "slices") -> list[np.ndarray]:
    """Split a weight tensor into 2-D matrices: itself (2-D), kernel slices ("slices") or one flattening."""
    w = to_numpy(W)
    if w.ndim == 2:
        return [w]
    if w.ndim < 2:
        raise ValueError(f"need a weight tensor with >= 2 axes, got shape {w.shape}")
    if conv == "flatten":
        return [w.reshape(w.shape[0], -1)]
    if conv == "slices":
        flat = w.reshape(w.shape[0], w.shape[1], -1)
        return [flat[:, :, k] for k in range(flat.shape[2])]
    raise ValueError(f"conv must be 'slices' or 'flatten', got {conv!r}")


def esd(W: ArrayLike, conv: str = "slices") -> np.ndarray:
    """Sorted eigenvalues of X = W^T W / N (N = larger side; min(N, M) of them) over weight_matrices."""
    evals = []
    for m in weight_matrices(W, conv=conv):
        sv = np.linalg.svd(m, compute_uv=False)
        evals.append(sv**2 / max(m.shape))
    return np.sort(np.concatenate(evals))


def fit_power_law(
    evals: ArrayLike, xmin: float | None = None, min_tail: int = 2, rtol: float = 1e-10
) -> dict[str, float]:
    """Continuous power-law MLE of the tail of `evals`, x_min by minimal KS distance unless given.

    Values <= rtol * max are dropped first (numerically zero eigenvalues). `min_tail` is the fewest points
    a candidate tail may have. The KS distance is the two-sided sup |F_emp - F_fit| over the tail.
    Returns alpha, xmin, D (KS distance), n_tail, sigma = (alpha - 1)/sqrt(n_tail) (standard error) and
    n (number of eigenvalues used).
    """
    x = np.sort(to_numpy(evals).reshape(-1))
    x = x[x > rtol * x[-1]] if x.size and x[-1] > 0 else x[x > 0]
    if x.size < max(min_tail, 2):
        raise ValueError(f"need at least {max(min_tail, 2)} positive eigenvalues, got {x.size}")
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j >= i} ln x_j
    n_all = x.size
    if xmin is not None:
        candidates = np.array([int(np.argmin(np.abs(x - xmin)))])
    else:
        candidates = np.arange(0, n_all - max(min_tail, 2) + 1)
    n_tail = n_all - candidates
    denom = suffix[candidates] - n_tail * logs[candidates]
    with np.errstate(divide="ignore"):
        alphas = np.where(denom > 0, 1.0 + n_tail / np.where(denom > 0, denom, 1.0), np.inf)
    ks = np.full(candidates.size, np.inf)
    chunk = max(1, 4_000_000 // n_all)
    for c0 in range(0, candidates.size, chunk):
        idx = candidates[c0:c0 + chunk]
        a = alphas[c0:c0 + chunk]
        ok = np.isfinite(a)
        if not np.any(ok):
            continue
        idx, a, n = idx[ok], a[ok], n_tail[c0:c0 + chunk][ok].astype(float)
        j = np.arange(n_all)[None, :]
        rank = j - idx[:, None]  # position in the tail; < 0 outside it
        inside = rank >= 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            cdf = 1.0 - np.exp((1.0 - a[:, None]) * (logs[None, :] - logs[idx][:, None]))
        gap = np.maximum(cdf - rank / n[:, None], (rank + 1) / n[:, None] - cdf)
        ks[np.flatnonzero(ok) + c0] = np.max(np.where(inside, gap, -np.inf), axis=1)
    best = int(np.argmin(ks))
    alpha, i_best = float(alphas[best]), int(candidates[best])
    nt = int(n_tail[best])
    return {
        "alpha": alpha,
        "xmin": float(x[i_best]),
        "D": float(ks[best]),
        "n_tail": nt,
        "sigma": (alpha - 1.0) / np.sqrt(nt),
        "n": int(n_all),
    }


def weight_alpha(W: ArrayLike, conv: str = "slices", min_tail: int = 2) -> dict[str, float]:
    """Power-law exponent alpha of the ESD of a weight matrix or conv kernel (fit_power_law on esd)."""
    return fit_power_law(esd(W, conv=conv), min_tail=min_tail)
