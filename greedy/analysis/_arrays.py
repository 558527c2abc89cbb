"""Conversions shared by the estimators: accept numpy arrays or torch tensors."""

from __future__ import annotations

import numpy as np
import torch

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
