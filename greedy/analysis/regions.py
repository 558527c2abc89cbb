"""Linear regions of a ReLU network along a line segment (Hanin & Rolnick, ICML 2019)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from greedy.analysis._arrays import ArrayLike, to_tensor

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
