"""Conversions shared by the estimators (numpy arrays or torch tensors in), and the dimension reduction that the
information and binned-entropy families share."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor


def to_numpy(x: ArrayLike, dtype: type | None = np.float64) -> np.ndarray:
    """Return `x` as a numpy array (detached, on CPU), cast to `dtype` unless it is None."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr if dtype is None else arr.astype(dtype, copy=False)


def to_tensor(x: ArrayLike, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return `x` as a CPU torch tensor of `dtype` (detached)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def as_features(x: ArrayLike) -> np.ndarray:
    """Return features as a float64 N x D matrix, flattening all but the first axis."""
    arr = to_numpy(x)
    if arr.ndim == 1:
        return arr[:, None]
    return arr.reshape(arr.shape[0], -1)


def as_labels(y: ArrayLike) -> np.ndarray:
    """Return labels as a 1-D numpy array (dtype kept)."""
    return to_numpy(y, dtype=None).reshape(-1)


def check_xy(X: np.ndarray, y: np.ndarray) -> None:
    """Raise ValueError unless X (N x D) and y (N) have the same number of samples."""
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")


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
