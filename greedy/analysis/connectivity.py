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
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from greedy.analysis.context import Context, family
from greedy.models import GreedyNet

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


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

class _Heads(nn.Module):
    """A GreedyNet whose forward gives every head's logits (BatchNorm recomputation passes through all heads)."""

    def __init__(self, net: GreedyNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_heads(x)


@family("connectivity", pairwise=True)
def probe_connectivity(ctx: Context) -> dict[str, Any]:
    """Train loss and test accuracy along the straight line from this run (alpha 0) to the compared one (alpha 1),
    and the barrier height, for the final head and every head trained in both runs (Nguyen et al. 2019)."""
    s, net = ctx.settings, ctx.net
    settings = s.pick("path_points")
    if ctx.other is None:
        return {"settings": settings, "skipped": True,
                "notes": "needs two runs of one architecture: evaluate.py RUN --compare OTHER --analysis connectivity"}
    device = next(net.parameters()).device
    heads = sorted(set(ctx.trained_heads) & set(ctx.other_heads) | {net.num_stages})
    batches = lambda x: [x[i:i + s.batch_size].to(device) for i in range(0, x.shape[0], s.batch_size)]  # noqa: E731
    train_x, test_x = batches(ctx.train.x), batches(ctx.test.x)
    train_y, test_y = batches(ctx.train.y), batches(ctx.test.y)

    @torch.no_grad()
    def evaluate(model: GreedyNet) -> dict[str, float]:
        sums = torch.zeros(2, len(heads), dtype=torch.float64)
        for xs, ys, row in ((train_x, train_y, 0), (test_x, test_y, 1)):
            for xb, yb in zip(xs, ys, strict=True):
                logits = model.forward_heads(xb)
                for i, d in enumerate(heads):
                    lg = logits[d - 1].float()
                    sums[row, i] += (F.cross_entropy(lg, yb, reduction="sum") if row == 0
                                     else (lg.argmax(1) == yb).sum()).double().cpu()
        loss, acc = sums[0] / ctx.train.y.shape[0], sums[1] / ctx.test.y.shape[0]
        return {**{f"train_loss{d}": float(v) for d, v in zip(heads, loss, strict=True)},
                **{f"test_acc{d}": float(v) for d, v in zip(heads, acc, strict=True)}}

    stored = [evaluate(m.eval()) for m in (net, ctx.other)]  # the endpoints with their own BatchNorm statistics
    alphas = np.linspace(0.0, 1.0, s.path_points).tolist()
    curves = linear_path(net, net.state_dict(), ctx.other.state_dict(), alphas, evaluate,
                         bn_inputs=train_x if has_batchnorm(net) else None, forward=_Heads)
    paths = []
    for d in heads:
        loss, acc = curves[f"train_loss{d}"], curves[f"test_acc{d}"]
        error = {"alpha": alphas, "test_error": [1.0 - a for a in acc]}
        paths.append({"model": "final" if d == net.num_stages else f"head{d}", "depth": d, "train_loss": loss,
                      "test_acc": acc, **path_summary({"alpha": alphas, "train_loss": loss}, ["train_loss"]),
                      **path_summary(error, ["test_error"]),
                      "stored_bn_train_loss": [e[f"train_loss{d}"] for e in stored],
                      "stored_bn_test_acc": [e[f"test_acc{d}"] for e in stored]})
    return {
        "settings": settings, "alphas": alphas, "paths": paths, "bn_recomputed": has_batchnorm(net),
        "notes": (
            "theta(a) = (1 - a) theta_A + a theta_B, A = this run, B = the compared one; final: all blocks and the "
            "last head (the assembled net); headJ: blocks 1..J and head J interpolated (the auxiliary problem of "
            "stage J), for heads trained in both runs. train_loss: cross-entropy on the train subset; test_acc on "
            "the test subset. Barrier = max_a [v(a) - ((1 - a) v(0) + a v(1))] >= 0 (0: no rise above the chord). "
            "BatchNorm running statistics are not interpolated: they are recomputed at every point, endpoints "
            "included, from the train subset (train-mode passes, cumulative average; update_bn); "
            "stored_bn_*: the endpoints A, B with their own running statistics, for reference"
        ),
    }
