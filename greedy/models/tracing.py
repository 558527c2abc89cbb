"""A chain of units, traced and cut: each unit's output shape and FLOPs on the meta device, and the K local modules
(blocks) the chain is split into (equal FLOPs, or explicit split points).

A net is an ordered chain of units (a plain net's conv blocks; a ResNet's stem and residual blocks; any timm CNN's
layers). `trace_units` runs it on a meta batch (no memory, no compute); `split_units` cuts it into consecutive local
modules, each trained by one auxiliary problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from greedy.errors import UsageError

Units = list[tuple[str, nn.Module]]


@dataclass
class UnitTrace:
    """What one unit does to a batch of 2: output shape (C, H, W), forward FLOPs (FlopCounterMode's count) and
    activation bytes per image (the outputs of its layers, each leaf module's: what training keeps for backward, to
    within the few tensors a unit computes outside its layers)."""

    name: str
    out_shape: tuple[int, ...]
    flops: int
    activation_bytes: int = 0


class UnitShape(NamedTuple):
    """One unit of a net's chain with the shapes (C, H, W) it takes and gives: what an objective that builds on the
    net's later units (AugLocal) reads (greedy.objectives.ModuleSpec.units)."""

    name: str
    unit: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def meta_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with meta stand-ins for its weights: shapes and FLOPs only, whatever device the module is on,
    and its BatchNorm statistics untouched."""
    state = {name: torch.empty_like(t, device="meta")
             for name, t in chain(module.named_parameters(), module.named_buffers())}
    return functional_call(module, state, (x,))


def shape_str(t: torch.Tensor) -> str:
    """'CxHxW' of a batch ``N x C x H x W`` (the shape without the batch dimension), for messages."""
    return "x".join(map(str, t.shape[1:]))


class TooSmall(UsageError):
    """An input (C x H x W) that unit `unit` (0-based; -1: the stem) of a chain cannot take, in local module `module`
    where that is known."""

    def __init__(self, size: str, unit: int, name: str, problem: str, module: int | None = None):
        self.size, self.unit, self.name, self.problem, self.module = size, unit, name, problem, module
        where = (f"unit {unit + 1} '{name}'" if unit >= 0 else name) + (f" in local module {module}" if module else "")
        super().__init__(f"input {size} does not fit {where} ({problem}); use larger images, sizes the downsampling "
                         "divides (space-to-depth needs even sizes), or fewer downsampling layers")


@contextlib.contextmanager
def layer_output_bytes() -> Iterator[list[int]]:
    """While active, the bytes of the tensor output of every leaf module that runs (conv, BN, ReLU, ...), in
    order: a global forward hook, removed on exit."""
    sizes: list[int] = []

    def count(module: nn.Module, _: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and next(module.children(), None) is None:
            sizes.append(out.numel() * out.element_size())

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        yield sizes
    finally:
        handle.remove()


def trace_units(units: Units, in_shape: tuple[int, int, int], stem: nn.Module | None = None) -> list[UnitTrace]:
    """Run the chain on a meta batch of 2 inputs of `in_shape` (C, H, W): each unit's output shape, FLOPs and
    activation bytes per image (UnitTrace).

    Raises TooSmall (a UsageError) naming the first unit the input is too small for (it fails, or its output
    is empty).
    """
    x = torch.zeros(2, *in_shape, device="meta")
    if stem is not None:
        try:
            x = meta_call(stem, x)
        except RuntimeError as err:
            raise TooSmall("x".join(map(str, in_shape)), -1, "the input stem",
                           f"it cannot take it: {str(err).splitlines()[0]}") from None
    traces = []
    for i, (name, unit) in enumerate(units):
        size, problem = "x".join(map(str, in_shape)), None
        try:
            with layer_output_bytes() as layer_outputs, FlopCounterMode(display=False) as counter:
                y = meta_call(unit, x)
            if y.numel() == 0:
                problem = f"it turns its {shape_str(x)} input into {shape_str(y)}"
        except RuntimeError as err:
            problem = f"it cannot take its {shape_str(x)} input: {str(err).splitlines()[0]}"
        if problem:
            raise TooSmall(size, i, name, problem)
        traces.append(UnitTrace(name, tuple(y.shape[1:]), counter.get_total_flops(), sum(layer_outputs) // 2))
        x = y
    return traces


def split_units(costs: list[int], num_modules: int | None = None, split_points: list[int] | None = None) -> list[range]:
    """Cut a chain of len(costs) units into consecutive local modules: the unit indices of each.

    split_points: the 0-based unit indices where a new module starts (sorted, in 1..units-1). Else num_modules K
    (None: one module per unit): the K modules whose summed per-unit `costs` are as equal as possible (least
    squared deviation from total/K). With forward FLOPs (split_by flops) a CIFAR ResNet, whose residual blocks all
    cost the same, gets InfoPro's equal-depth split; with activation bytes (split_by memory) modules whose training
    memory is balanced, InfoPro*'s idea (earlier cuts, where the feature maps are large). Raises UsageError (naming
    the config key) for impossible splits.
    """
    n = len(costs)
    if split_points:
        bad = [p for p in split_points if not 1 <= p < n]
        if bad or sorted(set(split_points)) != list(split_points):
            raise UsageError(f"config key 'split_points': {list(split_points)} must be increasing unit indices in "
                             f"1..{n - 1} (the net has {n} units, 0-based)")
        if num_modules is not None and num_modules != len(split_points) + 1:
            raise UsageError(f"config key 'num_modules': {num_modules} contradicts split_points {list(split_points)} "
                             f"({len(split_points) + 1} local modules); give one of them (--num-modules null drops "
                             "the config file's)")
        bounds = [0, *split_points, n]
        return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    k = n if num_modules is None else num_modules
    if not 1 <= k <= n:
        raise UsageError(f"config key 'num_modules': {k} is outside 1..{n} (the net has {n} units)")
    if k == n:
        return [range(i, i + 1) for i in range(n)]
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    target = prefix[-1] / k
    inf = float("inf")
    # cost[j][i]: least squared deviation splitting units 0..i-1 into j modules; cut[j][i] the last module's start
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for s in range(j - 1, i):
                c = cost[j - 1][s] + (prefix[i] - prefix[s] - target) ** 2
                if c < cost[j][i]:
                    cost[j][i], cut[j][i] = c, s
    bounds, i = [n], n
    for j in range(k, 0, -1):
        i = cut[j][i]
        bounds.append(i)
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
