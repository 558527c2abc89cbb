"""Probes of linear separability (Alain & Bengio 2016) and of nearest-neighbour structure."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from greedy.analysis._arrays import ArrayLike, as_features, as_labels, check_xy
from greedy.analysis.context import Context, entry, family


def linear_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Fit multinomial logistic regression on standardized train features; return train and test accuracy."""
    Xtr, ytr = as_features(X_train), as_labels(y_train)
    Xte, yte = as_features(X_test), as_labels(y_test)
    check_xy(Xtr, ytr)
    check_xy(Xte, yte)
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"train has {Xtr.shape[1]} features but test has {Xte.shape[1]}")
    scaler = StandardScaler().fit(Xtr)
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(Xtr), ytr)
    return {
        "train_acc": float(np.mean(clf.predict(scaler.transform(Xtr)) == ytr)),
        "test_acc": float(np.mean(clf.predict(scaler.transform(Xte)) == yte)),
    }


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Scale every row to unit Euclidean norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def knn_accuracy(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike | None = None,
    y_test: ArrayLike | None = None,
    k: int = 5,
    chunk_size: int = 1024,
) -> float:
    """Accuracy of a k-nearest-neighbour majority vote under cosine distance (leave-one-out if no test set).

    Ties in the vote go to the class with the larger summed cosine similarity among the k neighbours.
    """
    Xtr, ytr = as_features(X_train), as_labels(y_train)
    check_xy(Xtr, ytr)
    loo = X_test is None
    if loo:
        Xte, yte = Xtr, ytr
    else:
        if y_test is None:
            raise ValueError("y_test is required with X_test")
        Xte, yte = as_features(X_test), as_labels(y_test)
        check_xy(Xte, yte)
    n_ref = Xtr.shape[0] - (1 if loo else 0)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k must be in [1, {n_ref}], got {k}")
    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    A, B = _unit_rows(Xtr), _unit_rows(Xte)
    correct = 0
    for start in range(0, B.shape[0], chunk_size):
        sim = B[start:start + chunk_size] @ A.T
        if loo:
            rows = np.arange(sim.shape[0])
            sim[rows, start + rows] = -np.inf
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn, axis=1)
        votes = np.zeros((sim.shape[0], classes.size))
        np.add.at(votes, (np.arange(sim.shape[0])[:, None], ytr_idx[nn]), 1.0 + 1e-6 * nn_sim)
        pred = classes[np.argmax(votes, axis=1)]
        correct += int(np.sum(pred == yte[start:start + chunk_size]))
    return correct / Xte.shape[0]


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

@family("linear", during={"train_acc": "linear_train_acc", "test_acc": "linear_test_acc"})
def probe_linear(ctx: Context) -> dict[str, Any]:
    """Train/test accuracy of a logistic-regression probe per layer (Alain & Bengio 2016)."""
    s, r = ctx.settings, ctx.reps
    layers = []
    for layer in ctx.layers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings: max_iter is recorded
            res = linear_probe(r.train[layer.name], r.y_train, r.test[layer.name], r.y_test, C=s.linear_c,
                               max_iter=s.linear_max_iter, seed=s.seed)
        layers.append(entry(layer, **res, dim=int(r.test[layer.name].shape[1])))
    return {"settings": s.pick("linear_c", "linear_max_iter"), "layers": layers,
            "notes": "multinomial logistic regression on standardized pooled features, fit on the train subset"}


@family("knn", during={"test_acc": "knn_test_acc"})
def probe_knn(ctx: Context) -> dict[str, Any]:
    """Test accuracy of a cosine k-nearest-neighbour classifier on the train subset, per layer."""
    s, r = ctx.settings, ctx.reps
    layers = [entry(la, test_acc=knn_accuracy(r.train[la.name], r.y_train, r.test[la.name], r.y_test, k=s.knn_k))
              for la in ctx.layers()]
    return {"settings": s.pick("knn_k"), "layers": layers,
            "notes": "k-NN majority vote under cosine distance; references: the train subset"}
