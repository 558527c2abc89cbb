"""Probe families run on a trained GreedyNet: `run_analysis(net, data, names, settings)` -> JSON-ready dict.

The runner only schedules: it builds the shared Context (seeded subsets, representations computed once), runs the
named families and collects their results. The families are registered in `greedy.registry.PROBES`, each in the
file of its estimator (see context.py; greedy/analysis/__init__.py imports them in report order). Every family
returns {"settings": what produced it, "notes": how to read it, ...} and, for the layer-wise families, "layers":
one entry per probed layer ({"layer", "depth", "kind", values...}).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

# the family modules register their families in this order (the order of reports and of `--analysis all`)
from greedy.analysis import (  # noqa: F401, I001  # noqa: F401, I001
    anisotropy,
    chaos,
    clustering,
    connectivity,
    information,
    moments,
    probes,
    regions,
    robustness,
    similarity,
    spectrum,
)
from greedy.analysis.context import AnalysisSettings, Context
from greedy.analysis.representations import Sample
from greedy.analysis.similarity import cka_matrix
from greedy.datasets import DataBundle
from greedy.models import GreedyNet
from greedy.registry import PROBES

FAMILIES = PROBES  # name -> ProbeFamily (callable on a Context), in registration order
PAIRWISE = tuple(name for name in PROBES if PROBES[name].pairwise)  # families of two runs (--compare)
AT_INIT = tuple(name for name in PROBES if PROBES[name].at_init)  # families that also probe the net at init


@contextmanager
def cpu_threads(n: int):
    """Run with n torch intra-op and BLAS threads, restoring torch's count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def run_analysis(net: GreedyNet, data: DataBundle, names: Sequence[str], settings: AnalysisSettings | None = None,
                 trained_heads: Sequence[int] | None = None, timings: dict[str, float] | None = None,
                 init_net: GreedyNet | None = None, other: GreedyNet | None = None,
                 other_heads: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the named probe families on `net` (eval mode); trained_heads are 1-based (None: all heads); `init_net`,
    the net the run started from, adds the init_* values of the moments and chaos families; `other` (with its
    trained `other_heads`, None: all) is the second run the PAIRWISE families need.

    Returns {"samples": ..., "layers": ..., family: result, ...}; per-family seconds go into `timings`.
    """
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {unknown}; choose from {', '.join(FAMILIES)}")
    settings = settings or AnalysisSettings()
    net.eval()
    heads = list(trained_heads) if trained_heads is not None else list(range(1, net.num_stages + 1))
    if init_net is not None:
        init_net.eval()
    ctx = Context(net, data, settings, heads, init_net)
    if other is not None:
        ctx.other = other
        ctx.other_heads = list(other_heads) if other_heads is not None else list(range(1, other.num_stages + 1))
    out: dict[str, Any] = {"samples": _sample_info(ctx)}
    with cpu_threads(settings.threads):
        for name in names:
            t0 = time.perf_counter()
            out[name] = FAMILIES[name](ctx)
            if timings is not None:
                timings[name] = time.perf_counter() - t0
    if "reps" in ctx.__dict__:
        out["layers"] = [{**asdict(la), "shape": ctx.reps.shapes.get(la.name)} for la in ctx.reps.layers]
    return out


def _sample_info(ctx: Context) -> dict[str, Any]:
    """Sizes and a digest of the seeded subsets (for checking that two analyses saw the same inputs)."""
    def digest(sample: Sample) -> str:
        return hashlib.sha1(np.asarray(sample.indices, dtype=np.int64).tobytes()).hexdigest()[:16]

    return {"train": len(ctx.train.indices), "test": len(ctx.test.indices), "seed": ctx.settings.seed,
            "train_indices_sha1": digest(ctx.train), "test_indices_sha1": digest(ctx.test)}


def compare_cka(net_a: GreedyNet, net_b: GreedyNet, data: DataBundle, settings: AnalysisSettings) -> dict[str, Any]:
    """Linear CKA between every layer of net A and every layer of net B on the same test inputs."""
    reps = [Context(n, data, settings).reps for n in (net_a, net_b)]
    matrix = cka_matrix([reps[0].test[n] for n in reps[0].names], [reps[1].test[n] for n in reps[1].names])
    same = [{"layer": n, "cka": float(matrix[i, reps[1].names.index(n)])}
            for i, n in enumerate(reps[0].names) if n in reps[1].names]
    return {"settings": settings.pick(), "names_a": reps[0].names, "names_b": reps[1].names,
            "matrix": matrix.tolist(), "same_layer": same,
            "notes": "rows: layers of run A, columns: layers of run B, same test subset"}
