"""Linear mode connectivity: the loss along the straight line between two trained networks, and its barrier.

Nguyen, Mukkamala & Hein (*On connected sublevel sets in deep learning*, ICML 2019) show that for wide enough
networks every sublevel set of the training loss is connected, so two solutions are joined by a path of low
loss; whether the straight line theta(a) = (1 - a) theta_A + a theta_B is such a path is the empirical question
of linear mode connectivity (Frankle, Dziugaite, Roy & Carbin, ICML 2020). The barrier height along the line is

    B = max_a [ L(a) - ((1 - a) L(0) + a L(1)) ],

over the evaluated a (0 and 1 included, so B >= 0): 0 for a loss that is convex along the line (it never rises
above the chord), positive when the line climbs over a ridge between the two solutions.

BatchNorm: the running statistics of theta_A and theta_B belong to their own weights, and interpolating them
gives statistics that match neither the interpolated weights' activations nor anything else; they are
recomputed at every point, endpoints included, from a pass over training inputs in train mode with a cumulative
average (momentum None), as Garipov et al. (NeurIPS 2018) and Frankle et al. (2020) do, by
torch.optim.swa_utils.update_bn.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

Evaluate = Callable[[nn.Module], dict[str, float]]  # the model at one point -> named values (losses, accuracies)


def interpolate_state(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], alpha: float
                      ) -> dict[str, torch.Tensor]:
    """(1 - alpha) A + alpha B for every floating-point entry of two state dicts with the same keys and shapes;
    other entries (BatchNorm's num_batches_tracked) are taken from A. alpha = 0 gives A's tensors exactly.
    Raises ValueError when the keys or shapes differ."""
    if state_a.keys() != state_b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(state_a) ^ set(state_b))[:4]}")
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        out[key] = torch.lerp(a, b.to(a.device, a.dtype), alpha) if a.is_floating_point() else a.clone()
    return out


def barrier(values: Sequence[float], alphas: Sequence[float]) -> tuple[float, float]:
    """The barrier height max_a [v(a) - ((1 - a) v(0) + a v(1))] of values along the path, and the a where it is
    reached (alphas must start at 0 and end at 1; float64). Raises ValueError otherwise."""
    a, v = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if a.shape != v.shape or a.size < 2 or a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("alphas must run from 0 to 1 with one value per alpha")
    gap = v - ((1.0 - a) * v[0] + a * v[-1])
    i = int(np.argmax(gap))
    return float(gap[i]), float(a[i])


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model holds a BatchNorm layer with running statistics (whose statistics a path recomputes)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def linear_path(model: nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                alphas: Sequence[float], evaluate: Evaluate, bn_inputs: Iterable[torch.Tensor] | None = None,
                forward: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, list[float]]:
    """Evaluate the networks theta(a) = (1 - a) A + a B for every a in alphas.

    `model` gives the architecture (a deep copy is loaded with each point's weights; the model itself is not
    changed); `evaluate(model_at_a)`, run in eval mode without gradients, returns named numbers, collected into one
    list per name. When `bn_inputs` (batches of training inputs, on the model's device) is given, every BatchNorm
    layer's running statistics are recomputed at each point from them (torch.optim.swa_utils.update_bn: reset,
    train-mode passes with a cumulative average, eval mode again); `forward(model)` picks the module whose forward
    those passes call (default the model; e.g. one returning every head's logits, so that head BatchNorms are
    recomputed too).
    Returns {"alpha": alphas, name: [value per alpha], ...}.
    """
    work = copy.deepcopy(model)
    curves: dict[str, list[float]] = {"alpha": [float(a) for a in alphas]}
    batches = list(bn_inputs) if bn_inputs is not None else None
    for a in alphas:
        work.load_state_dict(interpolate_state(state_a, state_b, float(a)))
        if batches is not None:
            update_bn(batches, forward(work) if forward is not None else work)
        work.eval()
        with torch.no_grad():
            values = evaluate(work)
        for name, value in values.items():
            curves.setdefault(name, []).append(float(value))
    return curves


def path_summary(curves: dict[str, list[float]], keys: Sequence[str]) -> dict[str, Any]:
    """Barrier height and where it is reached, for each of `keys` in a linear_path result."""
    out = {}
    for key in keys:
        height, where = barrier(curves[key], curves["alpha"])
        out[f"{key}_barrier"], out[f"{key}_barrier_alpha"] = height, where
    return out
