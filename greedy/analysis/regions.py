"""Linear regions of a ReLU network along a line segment (Hanin & Rolnick, ICML 2019)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from greedy.analysis._arrays import ArrayLike, to_tensor
from greedy.analysis.context import Context, entry, family, seeded_pairs
from greedy.analysis.representations import Layer, block_prefix
from greedy.models import GreedyNet

PatternFn = Callable[[torch.Tensor], torch.Tensor]


def relu_pattern_fn(model: nn.Module, relu_types: tuple[type[nn.Module], ...] = (nn.ReLU,)) -> PatternFn:
    """Return x -> activation pattern: signs (input > 0) of every ReLU call's INPUT, flattened, concatenated.

    Forward pre-hooks read the input before the ReLU runs, so inplace ReLUs are safe; a ReLU module called
    several times contributes once per call. Functional relus (F.relu) are not seen. The hooks exist only
    while the returned callable runs; inputs go to the model's device, patterns come back on the CPU.
    The model is evaluated in whatever mode it is in (set eval mode yourself).
    """
    relus = [m for m in model.modules() if isinstance(m, relu_types)]
    if not relus:
        raise ValueError("model has no ReLU modules")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")

    def pattern(x: torch.Tensor) -> torch.Tensor:
        """Activation pattern of the batch x as a bool tensor B x (number of ReLU units)."""
        signs: list[torch.Tensor] = []

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            signs.append((inputs[0] > 0).reshape(inputs[0].shape[0], -1))

        handles = [m.register_forward_pre_hook(hook) for m in relus]
        try:
            with torch.no_grad():
                model(x.to(device))
        finally:
            for h in handles:
                h.remove()
        return torch.cat(signs, dim=1).cpu()

    return pattern


def line_regions(
    pattern_fn: PatternFn,
    x0: ArrayLike,
    x1: ArrayLike,
    n_points: int = 10000,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Count linear regions on the segment x0 -> x1 sampled at n_points evenly spaced points.

    x0 and x1 are single inputs (no batch axis). Returns:
      n_changes: consecutive samples with different patterns; n_regions = n_changes + 1 (a lower bound
        if two boundaries fall between neighbouring samples);
      n_flips: total unit sign flips between consecutive samples (counts such doubles once per unit);
      length: ||x1 - x0||; n_neurons: width of the pattern;
      mean_boundary_distance: mean over sample points of the distance, along the segment, to the nearest
        boundary (placed midway between the two samples where the pattern changes; inf if none);
      regions_per_length_per_neuron = n_regions / (length * n_neurons);
      boundaries_per_length_per_neuron = n_changes / (length * n_neurons).
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    a, b = to_tensor(x0, dtype), to_tensor(x1, dtype)
    if a.shape != b.shape:
        raise ValueError(f"x0 and x1 shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    ts = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    length = float(torch.linalg.vector_norm((b - a).double()))
    n_changes, n_flips, n_neurons = 0, 0, 0
    change_at: list[np.ndarray] = []
    prev: torch.Tensor | None = None
    for start in range(0, n_points, batch_size):
        t = ts[start:start + batch_size].to(dtype).reshape(-1, *([1] * a.ndim))
        pats = pattern_fn(a[None] + t * (b - a)[None]).bool()
        n_neurons = pats.shape[1]
        if prev is not None:
            pats = torch.cat([prev, pats])
        diff = pats[1:] != pats[:-1]
        changed = diff.any(dim=1)
        n_changes += int(changed.sum())
        n_flips += int(diff.sum())
        offset = start - (1 if prev is not None else 0)
        change_at.append(offset + torch.nonzero(changed).flatten().numpy())
        prev = pats[-1:]
    changes = np.concatenate(change_at)
    tsn = ts.numpy()
    if changes.size:
        bounds = 0.5 * (tsn[changes] + tsn[changes + 1])
        pos = np.searchsorted(bounds, tsn)
        left = np.abs(tsn - bounds[np.clip(pos - 1, 0, bounds.size - 1)])
        right = np.abs(bounds[np.clip(pos, 0, bounds.size - 1)] - tsn)
        mean_dist = float(np.mean(np.minimum(left, right))) * length
    else:
        mean_dist = float("inf")
    n_regions = n_changes + 1
    scale = length * n_neurons
    return {
        "n_changes": n_changes,
        "n_regions": n_regions,
        "n_flips": n_flips,
        "length": length,
        "n_neurons": n_neurons,
        "mean_boundary_distance": mean_dist,
        "regions_per_length_per_neuron": n_regions / scale if scale > 0 else float("nan"),
        "boundaries_per_length_per_neuron": n_changes / scale if scale > 0 else float("nan"),
    }


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

def _depth_patterns(net: GreedyNet, example: torch.Tensor) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """Pattern function of the net up to each block depth, sharing one forward pass of the full net per input."""
    full = relu_pattern_fn(block_prefix(net, net.num_stages))
    cols = {d: relu_pattern_fn(block_prefix(net, d))(example[None]).shape[1] for d in range(1, net.num_stages + 1)}
    cache: dict[bytes, torch.Tensor] = {}

    def for_depth(d: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def pattern(x: torch.Tensor) -> torch.Tensor:
            key = hashlib.blake2b(x.detach().cpu().numpy().tobytes(), digest_size=16).digest()
            if key not in cache:
                cache.clear()
                cache[key] = full(x)
            return cache[key][:, :cols[d]]
        return pattern

    return {d: for_depth(d) for d in cols}


@family("regions")
def probe_regions(ctx: Context) -> dict[str, Any]:
    """Linear regions of the net up to each block along segments from test inputs (Hanin & Rolnick 2019)."""
    s, net, x = ctx.settings, ctx.net, ctx.test.x
    net.eval()
    patterns = _depth_patterns(net, x[0])
    per_depth: dict[int, list[dict[str, float]]] = {d: [] for d in patterns}
    for i, j in seeded_pairs(x.shape[0], min(s.segments, x.shape[0]), s.seed):
        x0, x1 = x[i], x[i] + s.segment_fraction * (x[j] - x[i])
        for d, fn in patterns.items():
            per_depth[d].append(line_regions(fn, x0, x1, n_points=s.segment_points))
    layers = [entry(Layer(f"block{d}", d, "block"), **_mean_regions(rs, s.segment_points))
              for d, rs in per_depth.items()]
    return {"settings": s.pick("segments", "segment_fraction", "segment_points"), "layers": layers,
            "notes": "regions of the net up to block l (its ReLUs and all before) on segments from a test input "
                     "x_i towards x_j, the first segment_fraction of the way; counts are lower bounds when "
                     "points_per_region is small; mean_boundary_distance in input units, averaged over segments "
                     "with a boundary; max-pool switches are not counted"}


def _mean_regions(rs: list[dict[str, float]], n_points: int) -> dict[str, float]:
    """Average line_regions results over segments (boundary distance over segments that have a boundary)."""
    dists = [r["mean_boundary_distance"] for r in rs if math.isfinite(r["mean_boundary_distance"])]
    mean = lambda key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    return {
        "n_regions": mean("n_regions"),
        "regions_per_length": float(np.mean([r["n_regions"] / r["length"] for r in rs])),
        "regions_per_length_per_neuron": mean("regions_per_length_per_neuron"),
        "boundaries_per_length_per_neuron": mean("boundaries_per_length_per_neuron"),
        "mean_boundary_distance": float(np.mean(dists)) if dists else float("inf"),
        "segments_without_boundary": len(rs) - len(dists),
        "mean_length": mean("length"),
        "n_neurons": int(rs[0]["n_neurons"]),
        "min_points_per_region": float(n_points / max(r["n_regions"] for r in rs)),
    }
