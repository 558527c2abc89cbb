"""Linear centered kernel alignment (CKA; Kornblith et al., ICML 2019) between representations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from greedy.analysis._arrays import ArrayLike, as_features
from greedy.analysis.context import Context, entry, family


class _Centered:
    """A column-centered representation, kept in the cheaper of its feature (N x D) or Gram (N x N) form."""

    def __init__(self, X: ArrayLike) -> None:
        """Center the columns of X (N x D, flattened) and precompute ||Xc^T Xc||_F = ||Xc Xc^T||_F."""
        x = as_features(X)
        x = x - x.mean(axis=0, keepdims=True)
        self.n = x.shape[0]
        self.x: np.ndarray | None = x if x.shape[0] >= x.shape[1] else None
        self.gram: np.ndarray | None = None if self.x is not None else x @ x.T
        self.norm = float(np.linalg.norm(self.gram if self.gram is not None else x.T @ x))

    def hsic(self, other: _Centered) -> float:
        """Return ||Y^T X||_F^2 = <X X^T, Y Y^T>_F for two centered representations of the same N samples."""
        if self.n != other.n:
            raise ValueError(f"representations have {self.n} and {other.n} samples")
        if self.x is not None and other.x is not None:
            return float(np.sum((other.x.T @ self.x) ** 2))
        if self.gram is not None and other.gram is not None:
            return float(np.sum(self.gram * other.gram))
        gram, feats = (self.gram, other.x) if self.gram is not None else (other.gram, self.x)
        return float(np.sum(feats * (gram @ feats)))


def _cka(a: _Centered, b: _Centered) -> float:
    """Linear CKA of two prepared representations (0 if either is constant)."""
    denom = a.norm * b.norm
    return a.hsic(b) / denom if denom > 0 else 0.0


def linear_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) of column-centered N x D1, N x D2 features."""
    return _cka(_Centered(X), _Centered(Y))


def cka_matrix(layers_a: Sequence[ArrayLike], layers_b: Sequence[ArrayLike] | None = None) -> np.ndarray:
    """Matrix of linear CKA between every pair of layers of one list (symmetric) or of two lists (A x B)."""
    prep_a = [_Centered(x) for x in layers_a]
    if layers_b is None:
        m = np.eye(len(prep_a))
        for i in range(len(prep_a)):
            for j in range(i + 1, len(prep_a)):
                m[i, j] = m[j, i] = _cka(prep_a[i], prep_a[j])
        for i, p in enumerate(prep_a):
            if p.norm == 0:
                m[i, i] = 0.0
        return m
    prep_b = [_Centered(x) for x in layers_b]
    return np.array([[_cka(a, b) for b in prep_b] for a in prep_a])


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

@family("cka")
def probe_cka(ctx: Context) -> dict[str, Any]:
    """Linear CKA between every pair of layers on the test subset."""
    names = [la.name for la in ctx.layers()]
    matrix = cka_matrix([ctx.reps.test[n] for n in names])
    return {"settings": ctx.settings.pick(), "layers": [entry(la) for la in ctx.layers()],
            "names": names, "matrix": matrix.tolist(), "notes": "linear CKA of pooled features (test subset)"}
