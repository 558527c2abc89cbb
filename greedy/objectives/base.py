"""The interface every local objective implements: what the trainer hands it, what it returns.

A local module j (a block) is trained on its *local objective*: from the module's output h, the logits of its
auxiliary net and the labels (and, for objectives that say so, the input images), it returns named loss terms,
each already weighted; the trainer minimises their sum and records them. An objective is an `nn.Module`, so the
extra modules it owns (a decoder, a projection head, a similarity conv) are trained with its local module.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ModuleSpec:
    """What an objective knows of the local module it trains: its 0-based index among the K modules of the net
    and the number of classes."""

    index: int
    num_modules: int
    num_classes: int

    @property
    def last(self) -> bool:
        """Whether this is the net's last local module (its head is the net's classifier)."""
        return self.index == self.num_modules - 1


class LocalObjective(nn.Module):
    """Base class of the registered local objectives (greedy.registry.OBJECTIVES, config key `objective`).

    Subclasses implement `forward(h, logits, y, x)` -> {term name: scalar loss tensor}: `h` the module's output
    (N x C x H x W), `logits` its auxiliary net's output (N x classes), `y` the labels (N, int64), `x` the net's
    input images (N x C_in x H_in x W_in, normalized) when `needs_input` is set, else None.

    Every mode passes `h` (a part returns (block output, logits); e2e: the last block's output). Today the trainer
    passes no `x` and optimizes no parameters of the objective itself: `ce` needs neither; the objectives with
    modules of their own (PredSim, InfoPro) come with them.
    """

    needs_input: ClassVar[bool] = False  # whether forward reads the input images x

    def __init__(self, spec: ModuleSpec | None = None) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, h: torch.Tensor | None, logits: torch.Tensor, y: torch.Tensor,
                x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss a local module minimises: the sum of its objective's (already weighted) terms; one term is
    returned as it is (the same tensor, so a one-term objective adds no operation to the graph)."""
    return functools.reduce(operator.add, terms.values())
