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
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModuleSpec:
    """What an objective knows of the local module it trains: its 0-based index among the K modules of the net,
    the number of classes, the shape (C, H, W) of the module's output and of the net's input images, and the
    per-channel mean and std the images were normalized with (values in [0, 1]). The shapes and statistics are
    None where the builder was not given them (`ce` needs none; the objectives that do say so).

    `units`: every unit of the net's chain, in order, each (name, unit, in shape, out shape)
    (greedy.models.tracing.UnitShape), and `last_unit` the index of this module's last unit among them: what an
    objective that builds its auxiliary net from the net's later units reads (AugLocal). Empty and None where the
    builder was not given the image shape."""

    index: int
    num_modules: int
    num_classes: int
    out_shape: tuple[int, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    units: tuple[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]], ...] = ()
    last_unit: int | None = None

    @property
    def last(self) -> bool:
        """Whether this is the net's last local module (its head is the net's classifier)."""
        return self.index == self.num_modules - 1


class LocalObjective(nn.Module):
    """Base class of the registered local objectives (greedy.registry.OBJECTIVES, config key `objective`).

    Subclasses implement `forward(h, logits, y, x)` -> {term name: scalar loss tensor}: `h` the module's output
    (N x C x H x W), `logits` its auxiliary net's output (N x classes), `y` the labels (N, int64), `x` the net's
    input images (N x C_in x H_in x W_in, normalized) when `needs_input` is set, else None.

    Every mode passes `h` (e2e: the last block's output). The objective is a child of the trainable part
    (builder.LocalPart), so its own modules are trained, saved in the run's states and synchronised under DDP
    with the block; they are not part of the trained net (model.safetensors).

    `detach_head`: the auxiliary net is trained on the detached output, as a readout that measures the module
    (its accuracy, the net's prediction at that depth) without sending gradients to the block; the objective's
    own terms train the block. False for `ce`, whose auxiliary net is the local problem.
    """

    needs_input: ClassVar[bool] = False  # whether forward reads the input images x

    @property
    def detach_head(self) -> bool:
        return False

    @property
    def term_names(self) -> tuple[str, ...]:
        """The names of the terms `forward` returns, in order (the trainer records each, and checks them)."""
        return ("ce",)

    def __init__(self, spec: ModuleSpec | None = None) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, h: torch.Tensor | None, logits: torch.Tensor, y: torch.Tensor,
                x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ReadoutObjective(LocalObjective):
    """An objective whose own modules train the block (PredSim, InfoPro): on modules 1..K-1 it returns the terms of
    `local_terms` (named `local_term_names`) plus "readout", the cross-entropy of the auxiliary net on the detached
    output (`detach_head`); the last module trains the net's classifier on {"ce": cross-entropy}."""

    local_term_names: ClassVar[tuple[str, ...]] = ()

    @property
    def detach_head(self) -> bool:
        return not self.spec.last

    @property
    def term_names(self) -> tuple[str, ...]:
        return ("ce",) if self.spec.last else (*self.local_term_names, "readout")

    def local_terms(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The objective's own weighted terms for module output h (N x C x H x W), labels y (N,), images x."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor | None, logits: torch.Tensor, y: torch.Tensor,
                x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        readout = F.cross_entropy(logits, y)
        if self.spec.last:
            return {"ce": readout}
        return {**self.local_terms(h, y, x), "readout": readout}


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss a local module minimises: the sum of its objective's (already weighted) terms; one term is
    returned as it is (the same tensor, so a one-term objective adds no operation to the graph)."""
    return functools.reduce(operator.add, terms.values())
