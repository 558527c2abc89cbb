"""GreedyBuilder: the stages a run trains, and the freezing of everything before the current block."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from greedy.models import GreedyNet


@dataclass
class Stage:
    """One training problem: `trainable(prefix(x))` is fit to the labels; `prefix` stays frozen."""

    index: int  # 0-based; the e2e stage carries the last block's index
    name: str  # stage1, stage2, ... or e2e
    prefix: nn.Module
    trainable: nn.Module


def freeze_prefix(net: GreedyNet, j: int) -> nn.Module:
    """Freeze the stem and blocks 0..j-1: no gradients, BatchNorm statistics fixed (eval mode)."""
    prefix = net.prefix(j)
    prefix.requires_grad_(False)
    prefix.eval()
    return prefix


class GreedyBuilder:
    """Grows a GreedyNet block by block (greedy), or trains it jointly as one stage (e2e)."""

    def __init__(self, net: GreedyNet, mode: str = "greedy"):
        if mode not in ("greedy", "e2e"):
            raise ValueError(f"GreedyBuilder trains greedy or e2e stages, not {mode!r}")
        self.net = net
        self.mode = mode

    @property
    def num_stages(self) -> int:
        return self.net.num_stages if self.mode == "greedy" else 1

    def stage(self, i: int) -> Stage:
        """Stage i, with its prefix frozen and its trainable part unfrozen."""
        net = self.net
        if self.mode == "e2e":
            last = net.num_stages - 1
            trainable = nn.Sequential(*net.blocks, net.heads[last])
            stage = Stage(last, "e2e", freeze_prefix(net, 0), trainable)
        else:
            stage = Stage(i, f"stage{i + 1}", freeze_prefix(net, i), nn.Sequential(net.blocks[i], net.heads[i]))
        stage.trainable.requires_grad_(True)
        return stage

    def stage_state_dict(self, stage: Stage) -> dict:
        """The weights a finished stage adds to the net, under the net's own parameter names."""
        if self.mode == "e2e":
            keep = ("blocks.", f"heads.{stage.index}.")
        else:
            keep = (f"blocks.{stage.index}.", f"heads.{stage.index}.")
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items() if k.startswith(keep)}
