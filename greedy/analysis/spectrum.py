"""Heavy-tailed weight spectra (Martin & Mahoney): ESD of W^T W / N and its power-law exponent alpha.

The power law p(x) ~ x^{-alpha} for x >= x_min is fitted to the largest eigenvalues by maximum likelihood,
alpha = 1 + n / sum_i ln(x_i / x_min), with x_min the candidate (every eigenvalue but the largest) whose
fit has the smallest Kolmogorov-Smirnov distance to the tail (Clauset, Shalizi & Newman 2009), as in the
`powerlaw` package and weightwatcher. Conv weights (out, in, kh, kw) follow weightwatcher's default
(pool=True): the kh*kw slices W[:, :, i, j] (out x in) are separate matrices whose eigenvalues are pooled
into one ESD; conv="flatten" instead uses the single out x (in*kh*kw) matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from greedy.analysis._arrays import ArrayLike, to_numpy
from greedy.analysis.context import Context, family
from greedy.models import GreedyNet


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


# weightwatcher 0.7.7's defaults (WeightWatcher.analyze and its WW_powerlaw.WWFit), followed exactly so that every
# layer weightwatcher analyzes gets the same alpha here.
WW_EVALS_THRESH = 1e-5  # eigenvalues of W^T W (not divided by N) at or below it are numerically zero: dropped
WW_MIN_EVALS = 8  # a layer with fewer eigenvalues (min_evals) is not analyzed
WW_SMALL_N = 20  # fewer eigenvalues (SMALL_N_CUTOFF): the small-N fit, and an alpha that means little
WW_SMALL_N_MIN_TAIL = 8  # the small-N fit's shortest tail (k_min)


def fit_power_law(evals: ArrayLike, xmin: float | None = None, thresh: float = 0.0) -> dict[str, float]:
    """Continuous power-law fit p(x) ~ x^-alpha of the tail x >= x_min of `evals`, as weightwatcher fits it.

    Eigenvalues <= `thresh` (same units as `evals`) are dropped. For each candidate x_min (every eigenvalue but the
    largest) alpha is the maximum-likelihood estimate 1 + n / sum ln(x_i / x_min) over the n tail points (Clauset,
    Shalizi & Newman 2009), and D = max |F_fit - i/n| its Kolmogorov-Smirnov distance; the x_min with the smallest
    D wins. With fewer than WW_SMALL_N eigenvalues weightwatcher's small-N rule applies: the bias-corrected MLE
    1 + (n - 1) / sum ln(x_i / x_min), tails of at least WW_SMALL_N_MIN_TAIL points only. A given `xmin` fixes the
    tail instead of searching it (our extension: weightwatcher treats it as a lower bound).

    Returns alpha, xmin, D, n_tail, sigma = (alpha - 1) / sqrt(n_tail), n (eigenvalues used) and small_n.
    Raises ValueError with fewer than 2 eigenvalues above `thresh`.
    """
    x = np.sort(to_numpy(evals).reshape(-1).astype(np.float64))
    x = x[(x > thresh) & (x > 0)]
    n_all = x.size
    if n_all < 2:
        raise ValueError(f"need at least 2 eigenvalues above {thresh:g}, got {n_all}")
    small = n_all < WW_SMALL_N
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j >= i} ln x_j
    candidates = np.arange(n_all - 1) if xmin is None else np.array([min(int(np.argmin(np.abs(x - xmin))),
                                                                          n_all - 2)])
    n_tail = (n_all - candidates).astype(np.float64)
    s = suffix[candidates] - n_tail * logs[candidates]
    usable = (s > 1e-12) & (n_tail >= WW_SMALL_N_MIN_TAIL) if small else s > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = np.where(usable, 1.0 + (n_tail - 1.0 if small else n_tail) / np.where(s > 0, s, 1.0), 0.0)
    if small and not usable.any():  # weightwatcher's fallback: the whole spectrum as the tail
        usable[0] = s[0] > 1e-12
        alphas[0] = 1.0 + (n_tail[0] - 1.0) / s[0] if usable[0] else 1.0
    ks = np.ones(candidates.size)
    for c, (i, a) in enumerate(zip(candidates, alphas, strict=True)):
        if usable[c] and a > 1.0:
            tail = x[i:]
            fitted = 1.0 - (tail / x[i]) ** (1.0 - a)
            ks[c] = np.max(np.abs(fitted - np.arange(tail.size) / tail.size))
    best = int(np.argmin(ks))
    alpha, nt = float(alphas[best]), int(n_tail[best])
    return {
        "alpha": alpha,
        "xmin": float(x[candidates[best]]),
        "D": float(ks[best]),
        "n_tail": nt,
        "sigma": (alpha - 1.0) / np.sqrt(nt),
        "n": int(n_all),
        "small_n": bool(small),
    }


def weight_alpha(W: ArrayLike, conv: str = "slices") -> dict[str, float]:
    """Power-law exponent alpha of the ESD of a weight matrix or conv kernel, as weightwatcher's `analyze()`.

    The ESD is `esd(W)` (eigenvalues of W^T W / N); weightwatcher's zero threshold applies to W^T W itself, so it
    is divided by N here. Raises ValueError for fewer than WW_MIN_EVALS eigenvalues (weightwatcher skips such
    layers). `small_n` in the result flags a fit on fewer than WW_SMALL_N eigenvalues.
    """
    matrices = weight_matrices(W, conv=conv)
    evals = esd(W, conv=conv)
    if evals.size < WW_MIN_EVALS:
        raise ValueError(f"{evals.size} eigenvalues, fewer than {WW_MIN_EVALS} (weightwatcher's min_evals): not fitted")
    return fit_power_law(evals, thresh=WW_EVALS_THRESH / max(matrices[0].shape))


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

def _weight_modules(net: GreedyNet) -> list[tuple[str, str, int, nn.Module]]:
    """(name, part, 1-based depth, module) of every conv and linear layer of the blocks and heads."""
    found = []
    for part, modules in (("block", net.blocks), ("head", net.heads)):
        for j, module in enumerate(modules):
            for name, m in module.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    found.append((f"{part}s.{j}.{name}", part, j + 1, m))
    return sorted(found, key=lambda f: (f[2], f[1] != "block"))


@family("spectrum")
def probe_spectrum(ctx: Context) -> dict[str, Any]:
    """Power-law exponent alpha of every conv/linear weight's ESD (Martin & Mahoney 2021), fitted as weightwatcher
    0.7.7's `analyze()` fits it; fits on fewer than WW_SMALL_N eigenvalues are flagged (`reliable: false`), layers
    with fewer than WW_MIN_EVALS are not fitted (weightwatcher skips them), and `mean_alpha` averages the reliable
    fits of trained layers only."""
    layers = []
    for name, part, depth, m in _weight_modules(ctx.net):
        entry = {"layer": name, "depth": depth, "kind": part, "shape": list(m.weight.shape),
                 "trained": part == "block" or depth in ctx.trained_heads}
        try:
            fit = weight_alpha(m.weight)
            entry.update({k: float(v) for k, v in fit.items() if k != "small_n"}, reliable=not fit["small_n"])
        except ValueError as err:
            entry.update(alpha=None, reliable=False, error=str(err))
        layers.append(entry)
    kept = [e["alpha"] for e in layers if e["reliable"] and e["trained"]]
    return {"settings": {"conv": "slices", "min_eigs_reliable": WW_SMALL_N, "min_eigs_fitted": WW_MIN_EVALS,
                         "fit": "weightwatcher 0.7.7 analyze() defaults"},
            "layers": layers, "mean_alpha": float(np.mean(kept)) if kept else None,
            "notes": f"ESD of W^T W / N, conv kernels as kh*kw slices pooled (weightwatcher's default); a fit on "
                     f"fewer than {WW_SMALL_N} eigenvalues (weightwatcher's small-N cutoff) means little: flagged "
                     f"reliable=false, drawn hollow and left out of mean_alpha; fewer than {WW_MIN_EVALS}: not "
                     "fitted; 2 < alpha < 6 is the range Martin & Mahoney associate with well-trained layers"}
