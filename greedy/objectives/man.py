"""`man` and `man_pp`: Momentum Auxiliary Networks of Su et al., "Momentum Auxiliary Network for Supervised Local
Learning" (MAN, ECCV 2024) and its scaled form MAN++ (Su et al., TPAMI 2026).

Module l's base objective (`man_base`: InfoPro contrast, InfoPro softmax or DGL's cross-entropy) is computed on
y instead of the module's output h, where y reads h through the next module's first unit u:
- MAN:   y = LB(h) + EMA(h)
- MAN++: y = s * LB(h) + (2 - s) * EMA(h), s a learnable scalar initialised to 1
EMA is a frozen copy of u that follows it, theta_ema <- m * theta_ema + (1 - m) * theta_u (m = `man_momentum`,
0.995) once per training step, before the copy is used; LB is a trainable copy of u (a learnable bias). Both start
from u's weights; EMA's BatchNorm statistics are its own. The last module has no next unit and trains the net's
classifier on cross-entropy, as the base objectives' last modules do.

Each step reads u's current weights: in decoupled mode those the next module's last step left, in greedy mode its
initial weights (the next module trains later). A pipeline whose groups split at a module boundary would hold u in
another process, so config refuses `man` with `pipeline` > 1.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from greedy.models.heads import create_head
from greedy.objectives.base import ModuleSpec, ReadoutObjective
from greedy.registry import OBJECTIVES

MAN_BASES = ("infopro_contrast", "infopro_ce", "dgl")


def frozen_copy(unit: nn.Module) -> nn.Module:
    """A copy of `unit` whose parameters are buffers under the same names: no optimizer and no `requires_grad_`
    reaches them, the state dict saves them, and the unit computes as before."""
    new = copy.deepcopy(unit)
    for module in new.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                del module._parameters[name]
                module.register_buffer(name, param.detach().clone())
    return new


@torch.no_grad()
def ema_update(ema: nn.Module, source: nn.Module, momentum: float) -> None:
    """theta_ema <- momentum * theta_ema + (1 - momentum) * theta_source for every parameter of `source` and the
    buffer of the same name in `ema` (a `frozen_copy`), in place, each product rounded before the sum, as written.
    The other buffers (BatchNorm statistics) are left to `ema`'s own forward; meta tensors are skipped."""
    weights = dict(ema.named_buffers())
    for name, p in source.named_parameters():
        w = weights[name]
        if p.is_meta or w.is_meta:  # shapes only (greedy.cost counts a step on meta tensors): no values to average
            continue
        w.mul_(momentum).add_((1 - momentum) * p.detach().to(w.device, w.dtype))


@OBJECTIVES.register("man")
class MAN(ReadoutObjective):
    """Modules 1..K-1: the base objective's terms on y ({"recon", "task"} for InfoPro, {"ce"} for dgl, DGL's
    mlp_sr net on y) plus "readout", the config's auxiliary net on the detached h; the last module {"ce"}.

    Owns, on modules 1..K-1: `lb` (trainable copy of the next unit), `ema` (its momentum copy, weights as buffers),
    `base` (the base objective's modules, sized for y), and for MAN++ `s`. Reads the input images (its InfoPro bases
    reconstruct them). Raises ValueError for an unknown `man_base`, or when the builder was not given the image
    shape (no chain of units: build the stages with GreedyBuilder.for_run)."""

    needs_input: ClassVar[bool] = True
    scaled: ClassVar[bool] = False

    def __init__(self, spec: ModuleSpec, man_base: str = "infopro_contrast", man_momentum: float = 0.995,
                 infopro_lambdas: tuple[float, ...] | list[float] = (5.0, 1.0, 0.0, 1.0),
                 contrast_temperature: float = 0.07) -> None:
        super().__init__(spec)
        if man_base not in MAN_BASES:
            raise ValueError(f"man_base {man_base!r} is not one of {', '.join(MAN_BASES)}")
        self.base_name, self.momentum = man_base, man_momentum
        if spec.last:
            return
        if not spec.units or spec.last_unit is None:
            raise ValueError(f"{type(self).__name__.lower()} needs the net's chain of units for module "
                             f"{spec.index + 1}; build the stages with GreedyBuilder.for_run (or image_shape=...)")
        name, unit, _, out_shape = spec.units[spec.last_unit + 1]
        self.next_unit_name = name
        self._next = (unit,)  # a tuple, not a child: the next module owns and trains it
        self.lb = copy.deepcopy(unit).requires_grad_(True)
        self.ema = frozen_copy(unit)
        if self.scaled:
            self.s = nn.Parameter(torch.ones(()))
        if man_base == "dgl":
            self.base = create_head("mlp_sr", out_shape[0], spec.num_classes)
            self.local_term_names = ("ce",)
        else:
            self.base = OBJECTIVES.get(man_base)(dataclasses.replace(spec, out_shape=out_shape),
                                                 infopro_lambdas=infopro_lambdas,
                                                 contrast_temperature=contrast_temperature)
            self.local_term_names = self.base.local_term_names

    @property
    def next_unit(self) -> nn.Module:
        """The next module's first unit, which `ema` follows."""
        return self._next[0]

    def momentum_input(self, h: torch.Tensor) -> torch.Tensor:
        """y from the module output h (N x C x H x W): LB(h) + EMA(h), or s LB(h) + (2 - s) EMA(h) for MAN++;
        N x C' x H' x W', the next unit's output shape."""
        if self.scaled:
            return self.s * self.lb(h) + (2 - self.s) * self.ema(h)
        return self.lb(h) + self.ema(h)

    def local_terms(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.training:
            ema_update(self.ema, self.next_unit, self.momentum)
        z = self.momentum_input(h)
        if self.base_name == "dgl":
            return {"ce": F.cross_entropy(self.base(z), y)}
        return self.base.local_terms(z, y, x)


@OBJECTIVES.register("man_pp")
class MANPlusPlus(MAN):
    """MAN++: y = s * LB(h) + (2 - s) * EMA(h) with a learnable scalar s (initialised to 1), Su et al. 2026."""

    scaled: ClassVar[bool] = True
