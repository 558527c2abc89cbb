"""GreedyBuilder: the stages a run trains, and the freezing of everything before the current block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from greedy.models import GreedyNet
from greedy.objectives import LocalObjective, ModuleSpec, create_objective


class BlockWithHead(nn.Module):
    """Block j and its auxiliary head as one trainable part (decoupled mode): returns (block output, logits).
    (Its children are named block and head, as decoupled states have always been saved.)"""

    def __init__(self, block: nn.Module, head: nn.Module):
        super().__init__()
        self.block = block
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.block(x)
        return h, self.head(h)


class BlocksThenHead(nn.Sequential):
    """Block(s) then a head as one trainable part (a greedy stage: block j and head j; e2e: every block and the
    last head): returns (the last block's output, logits), the output for the local objective. The children are
    numbered as in nn.Sequential (blocks 0..n-2, the head n-1), so saved weights and states keep their names."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *blocks, head = self
        for block in blocks:
            x = block(x)
        return x, head(x)


@dataclass
class Stage:
    """One training problem: `trainable(prefix(x))` (block output, logits) is fit to the labels by the local
    objective; `prefix` stays frozen.

    In decoupled mode `trainable` is a ModuleList of BlockWithHead parts, each fit on its predecessor's
    detached output. `objectives` holds the local objective of each part.
    """

    index: int  # 0-based; the e2e and decoupled stages carry the last block's index
    name: str  # stage1, stage2, ... or e2e or decoupled
    prefix: nn.Module
    trainable: nn.Module
    objectives: list[LocalObjective]  # one per part

    @property
    def decoupled(self) -> bool:
        return self.name == "decoupled"

    @property
    def parts(self) -> list[nn.Module]:
        """The separately optimized modules: every block+head in decoupled mode, else just `trainable`."""
        return list(self.trainable) if self.decoupled else [self.trainable]

    def part_ids(self) -> list[tuple[int, str]]:
        """(0-based index, name) under which each part's metrics are recorded."""
        if self.decoupled:
            return [(j, f"block{j + 1}") for j in range(len(self.trainable))]
        return [(self.index, self.name)]


def freeze_prefix(net: GreedyNet, j: int) -> nn.Module:
    """Freeze the stem and blocks 0..j-1: no gradients, BatchNorm statistics fixed (eval mode)."""
    prefix = net.prefix(j)
    prefix.requires_grad_(False)
    prefix.eval()
    return prefix


class GreedyBuilder:
    """Grows a GreedyNet block by block (greedy), trains it jointly as one stage (e2e), or trains every
    block at once on its own auxiliary problem with detached inputs (decoupled, one stage)."""

    def __init__(self, net: GreedyNet, mode: str = "greedy", objective: str = "ce"):
        """`objective`: the registered local objective (config key `objective`) each block is trained on; the
        e2e stage trains the whole net on the last block's. Raises ValueError for an unknown mode, UsageError for
        an unknown objective."""
        if mode not in ("greedy", "e2e", "decoupled"):
            raise ValueError(f"GreedyBuilder trains greedy, e2e or decoupled stages, not {mode!r}")
        self.net = net
        self.mode = mode
        num_classes = net.num_classes
        self.objectives = [create_objective(objective, ModuleSpec(j, net.num_stages, num_classes))
                           for j in range(net.num_stages)]

    @property
    def num_stages(self) -> int:
        return self.net.num_stages if self.mode == "greedy" else 1

    def stage_ids(self) -> list[tuple[int, str]]:
        """(0-based block index, name) of each stage, as `stage(i)` makes them: the index its states are saved
        under (state-s{index}-e{epoch}) and the name of its weights file."""
        last = self.net.num_stages - 1
        if self.mode == "greedy":
            return [(i, f"stage{i + 1}") for i in range(self.net.num_stages)]
        return [(last, self.mode)]

    def stage(self, i: int) -> Stage:
        """Stage i, with its prefix frozen and its trainable part unfrozen."""
        net = self.net
        last = net.num_stages - 1
        if self.mode == "e2e":
            trainable = BlocksThenHead(*net.blocks, net.heads[last])
            stage = Stage(last, "e2e", freeze_prefix(net, 0), trainable, [self.objectives[last]])
        elif self.mode == "decoupled":
            parts = nn.ModuleList(BlockWithHead(b, h) for b, h in zip(net.blocks, net.heads, strict=True))
            stage = Stage(last, "decoupled", freeze_prefix(net, 0), parts, list(self.objectives))
        else:
            stage = Stage(i, f"stage{i + 1}", freeze_prefix(net, i), BlocksThenHead(net.blocks[i], net.heads[i]),
                          [self.objectives[i]])
        stage.trainable.requires_grad_(True)
        return stage

    def stage_state_dict(self, stage: Stage) -> dict:
        """The weights a finished stage adds to the net, under the net's own parameter names."""
        if self.mode == "e2e":
            keep = ("blocks.", f"heads.{stage.index}.")
        elif self.mode == "decoupled":
            keep = ("blocks.", "heads.")
        else:
            keep = (f"blocks.{stage.index}.", f"heads.{stage.index}.")
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items() if k.startswith(keep)}
