"""Class clustering of a representation: scatter ratio, neural collapse NC1, silhouette, binned entropy.

Scatter convention used throughout (class-weighted, biased covariances), for N samples in K classes with
counts n_c, class means mu_c and global mean mu = (1/N) sum_i x_i:

    S_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T = sum_c (n_c/N) Cov_c
    S_B = sum_c (n_c/N) (mu_c - mu)(mu_c - mu)^T

so that S_W + S_B is the (biased) total covariance. For balanced classes these equal Papyan et al.'s
Sigma_W and Sigma_B (2020).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import silhouette_score

from greedy.analysis._arrays import ArrayLike, as_features, as_labels, check_xy, reduce_dim
from greedy.analysis.context import Context, entry, family


def _class_stats(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (weights n_c/N, class means K x D, global mean D, index of each sample's class)."""
    classes, idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    means = np.zeros((classes.size, X.shape[1]))
    np.add.at(means, idx, X)
    means /= counts[:, None]
    weights = counts / X.shape[0]
    return weights, means, weights @ means, idx


def _prepare(X: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Convert features and labels and check that they match and hold at least two classes."""
    Xa, ya = as_features(X), as_labels(y)
    check_xy(Xa, ya)
    if np.unique(ya).size < 2:
        raise ValueError("need at least two classes")
    return Xa, ya


def scatter_traces(X: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """Return Tr(S_W), Tr(S_B) and their ratio Tr(S_W)/Tr(S_B) (module docstring gives the convention)."""
    Xa, ya = _prepare(X, y)
    weights, means, mu, idx = _class_stats(Xa, ya)
    tr_w = float(np.mean(np.sum((Xa - means[idx]) ** 2, axis=1)))
    tr_b = float(weights @ np.sum((means - mu) ** 2, axis=1))
    ratio = tr_w / tr_b if tr_b > 0 else float("inf")
    return {"tr_sw": tr_w, "tr_sb": tr_b, "ratio": ratio}


def scatter_ratio(X: ArrayLike, y: ArrayLike) -> float:
    """Within-class over between-class scatter Tr(S_W)/Tr(S_B) (0 when samples sit on their class means)."""
    return scatter_traces(X, y)["ratio"]


def nc1(X: ArrayLike, y: ArrayLike, rtol: float | None = None) -> float:
    """Neural-collapse NC1 = (1/K) Tr(S_W S_B^+) (Papyan et al. 2020), without forming D x D matrices.

    S_B = B^T B with B = diag(sqrt(n_c/N)) (mu_c - mu) is at most rank K-1; with B = U diag(s) V^T,
    Tr(S_W S_B^+) = sum_j (v_j^T S_W v_j) / s_j^2 over singular values above rtol * s_max
    (default rtol = max(K, D) * machine epsilon, as numpy's pinv).
    """
    Xa, ya = _prepare(X, y)
    weights, means, mu, idx = _class_stats(Xa, ya)
    B = np.sqrt(weights)[:, None] * (means - mu)
    _, s, Vt = np.linalg.svd(B, full_matrices=False)
    if rtol is None:
        rtol = max(B.shape) * np.finfo(np.float64).eps
    keep = s > rtol * s[0] if s[0] > 0 else np.zeros_like(s, dtype=bool)
    if not np.any(keep):
        return float("inf")
    proj = (Xa - means[idx]) @ Vt[keep].T
    return float(np.sum(np.mean(proj**2, axis=0) / s[keep] ** 2) / means.shape[0])


def silhouette(X: ArrayLike, y: ArrayLike, sample_size: int | None = None, seed: int = 0) -> float:
    """Mean silhouette coefficient of the label partition under Euclidean distance (sklearn)."""
    Xa, ya = _prepare(X, y)
    if sample_size is not None and sample_size >= Xa.shape[0]:
        sample_size = None
    return float(silhouette_score(Xa, ya, metric="euclidean", sample_size=sample_size, random_state=seed))


def bin_units(
    X: ArrayLike, n_bins: int = 30, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Uniformly bin every unit into n_bins: over its own observed [min, max], or over a fixed value_range.

    Returns an N x D integer array of bin indices in [0, n_bins); values outside a fixed range are clipped
    to the end bins, and a constant unit falls entirely in bin 0.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    Xa = as_features(X)
    if value_range is None:
        lo, hi = Xa.min(axis=0), Xa.max(axis=0)
    else:
        lo, hi = np.full(Xa.shape[1], float(value_range[0])), np.full(Xa.shape[1], float(value_range[1]))
        if not hi[0] > lo[0]:
            raise ValueError(f"value_range must be increasing, got {value_range}")
    width = np.where(hi > lo, hi - lo, 1.0)
    bins = np.floor((Xa - lo) / width * n_bins)
    return np.clip(bins, 0, n_bins - 1).astype(np.int64)


def binned_entropy(
    X: ArrayLike, n_bins: int = 30, value_range: tuple[float, float] | None = None
) -> float:
    """Entropy in nats of the empirical distribution of binned vectors H(Bin(T)) (per-unit uniform bins).

    At most ln N. Goldfeld et al. (ICML 2019): for a deterministic net this tracks clustering of the
    representation, not mutual information.
    """
    codes = bin_units(X, n_bins=n_bins, value_range=value_range)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    p = counts / codes.shape[0]
    return float(-np.sum(p * np.log(p)))


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

@family("clustering", during={"nc1": "nc1", "ratio": "scatter_ratio", "silhouette": "silhouette"})
def probe_clustering(ctx: Context) -> dict[str, Any]:
    """Class clustering of the test subset per layer: Tr(S_W)/Tr(S_B), NC1 and silhouette."""
    r = ctx.reps
    layers = []
    for la in ctx.layers():
        x = r.test[la.name]
        traces = scatter_traces(x, r.y_test)
        layers.append(entry(la, **traces, nc1=nc1(x, r.y_test), silhouette=silhouette(x, r.y_test)))
    return {"settings": ctx.settings.pick(), "layers": layers,
            "notes": "on the test subset; ratio = Tr(S_W)/Tr(S_B) and NC1 = Tr(S_W S_B^+)/K fall as classes "
                     "collapse; silhouette in [-1, 1] rises"}


@family("binned_entropy", during={"h_bin": "h_bin"})
def probe_binned_entropy(ctx: Context) -> dict[str, Any]:
    """H(Bin(T)) per layer: on the PCA readout used by `information`, and on the full pooled features."""
    s, r = ctx.settings, ctx.reps
    layers = []
    for la in ctx.layers(with_input=False):
        x = r.test[la.name]
        reduced = reduce_dim(x, s.info_dim, method="pca")
        layers.append(entry(la, h_bin=binned_entropy(reduced, n_bins=s.n_bins),
                            h_bin_full=binned_entropy(x, n_bins=s.n_bins), dim=int(reduced.shape[1]),
                             dim_full=int(x.shape[1])))
    n = int(r.y_test.shape[0])
    return {"settings": s.pick("n_bins", "info_dim"), "layers": layers, "max_nats": math.log(n), "n": n,
            "notes": "nats; per-unit uniform bins over each unit's range on the test subset; at most ln n "
                     "(h_bin_full, on every pooled unit, is usually saturated there)"}
