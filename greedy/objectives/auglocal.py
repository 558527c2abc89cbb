"""`auglocal`: the augmented auxiliary nets of Ma, Wu, Li, Wang, Huang, "Scaling Supervised Local Learning with
Augmented Auxiliary Networks" (AugLocal, ICLR 2024).

The local module l trains on plain cross-entropy, but its auxiliary net is built from the backbone itself: d new,
independently initialised copies of units of the net after module l, sampled uniformly (in order, the last unit
always among them: `sampled_units`), then global average pooling and a linear classifier. d shrinks linearly
with depth, from `auglocal_depth` at the first module to about (d + 1) / 2 at the module before the last with
the paper's tau = 0.5 (`pyramid_depths`).

A sampled unit whose input shape differs from what reaches it (another width, or a higher resolution) is preceded
by a projection (`adapter`): conv3x3 to the width it expects, stride 2 where the resolution halves (average
pooling first where it must shrink more), BatchNorm, ReLU. The paper instead rebuilds such a unit as a BasicBlock
at the new width with stride 2; the projection keeps every unit's own structure, so the same rule builds the
auxiliary net of a CIFAR ResNet and of any timm backbone's chain. The last module trains the net's classifier.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from greedy.objectives.base import ModuleSpec, ReadoutObjective
from greedy.registry import OBJECTIVES


def pyramid_depths(depth: int, tau: float, num_modules: int) -> list[int]:
    """The auxiliary depth of modules 1..K-1 (K = `num_modules`): max(1, round(d (1 - r) + r)) with
    r = tau * i / (K - 2) for module i = 0..K-2 (r = 0 when K = 2), Python's round (half to even), as in Ma et al.
    2024, section 3.3. tau = 0: every module d. Raises ValueError for K < 2 or d < 1."""
    if num_modules < 2 or depth < 1:
        raise ValueError(f"pyramid depths need K >= 2 modules and a depth >= 1, not K = {num_modules}, d = {depth}")
    ratios = [tau * i / (num_modules - 2) if num_modules > 2 else 0.0 for i in range(num_modules - 1)]
    return [max(1, round(depth * (1 - r) + r)) for r in ratios]


def sampled_units(last_unit: int, num_units: int, depth: int) -> list[int]:
    """The indices (0-based, in the whole chain of `num_units`) of the units whose copies make the auxiliary net of
    a module ending at unit `last_unit`: every later unit when there are at most `depth`, else
    round(last_unit + (num_units - 1 - last_unit) * i / depth) for i = 1..depth (uniform, ending at the last unit),
    as Ma et al. 2024 sample them. Empty for the last unit."""
    later = num_units - 1 - last_unit
    if later <= depth:
        return list(range(last_unit + 1, num_units))
    return [round(last_unit + later / depth * i) for i in range(1, depth + 1)]


def adapter(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Sequential:
    """A projection from (C, H, W) `in_shape` to the (C', H', W') `out_shape` a sampled unit takes: average pooling
    to 2H' x 2W' where H > 2H', conv3x3 (stride 2 where H > H') + BN + ReLU. Raises ValueError where the unit
    expects a higher resolution than reaches it."""
    (c, h, w), (c2, h2, w2) = in_shape, out_shape
    if h < h2 or w < w2:
        raise ValueError(f"auglocal: a later unit takes {c2}x{h2}x{w2} inputs, more pixels than the {c}x{h}x{w} "
                         "that reach it; its auxiliary net cannot be built from this net's units")
    layers: list[nn.Module] = []
    if h > 2 * h2 or w > 2 * w2:
        layers.append(nn.AdaptiveAvgPool2d((2 * h2, 2 * w2)))
        h, w = 2 * h2, 2 * w2
    stride = 2 if (h, w) != (h2, w2) else 1
    layers += [nn.Conv2d(c, c2, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def fresh_copy(unit: nn.Module) -> nn.Module:
    """A copy of `unit` with newly drawn weights (every submodule's reset_parameters) and reset BatchNorm
    statistics: the unit's structure, not its values."""
    new = copy.deepcopy(unit)
    for module in new.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return new.requires_grad_(True)


@OBJECTIVES.register("auglocal")
class AugLocal(ReadoutObjective):
    """{"aug": cross-entropy of the augmented auxiliary net, "readout": cross-entropy of the config's auxiliary net
    on the detached output} for modules 1..K-1; {"ce": the net's classifier} for the last.

    Owns, on modules 1..K-1, `aux_net`: the copies of the sampled later units (`sampled_units` with the module's
    `pyramid_depths` depth), each behind an `adapter` where shapes differ, global average pooling and a Linear to
    the classes. `sampled` lists the units' names. Raises ValueError when the builder was not given the image
    shape (no chain of units with shapes: build the stages with GreedyBuilder.for_run)."""

    local_term_names = ("aug",)

    def __init__(self, spec: ModuleSpec, auglocal_depth: int = 2, auglocal_tau: float = 0.5) -> None:
        super().__init__(spec)
        self.sampled: list[str] = []
        if spec.last:
            return
        if not spec.units or spec.last_unit is None:
            raise ValueError(f"auglocal needs the net's chain of units with their shapes for module {spec.index + 1}; "
                             "build the stages with GreedyBuilder.for_run (or image_shape=...)")
        depth = pyramid_depths(auglocal_depth, auglocal_tau, spec.num_modules)[spec.index]
        shape = spec.units[spec.last_unit][3]
        layers: list[nn.Module] = []
        for i in sampled_units(spec.last_unit, len(spec.units), depth):
            name, unit, in_shape, out_shape = spec.units[i]
            if tuple(in_shape) != tuple(shape):
                layers.append(adapter(shape, in_shape))
            layers.append(fresh_copy(unit))
            self.sampled.append(name)
            shape = out_shape
        self.aux_net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(shape[0], spec.num_classes))

    def local_terms(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {"aug": F.cross_entropy(self.aux_net(h), y)}
