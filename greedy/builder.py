"""GreedyBuilder: the stages a run trains, and the freezing of everything before the current block."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from greedy.datasets import DataBundle
from greedy.models import GreedyNet
from greedy.objectives import LocalObjective, ModuleSpec, create_objective
from greedy.schema import Config, objective_options


class LocalPart(nn.Module):
    """A trainable part: block(s), the auxiliary net on the last block's output, and the local objective that
    trains them (its own modules, e.g. PredSim's similarity conv or InfoPro's decoder, are trained with the part).

    `forward(x)` -> (block output h, logits), as evaluation needs; `forward(x, y, image)` -> (h, logits, the
    objective's loss terms), so the loss is computed inside the part's forward (under DDP the objective's
    parameters are synchronised like the block's). `image`: the net's input batch, for objectives that read it.
    An objective with `detach_head` (PredSim, InfoPro) trains the auxiliary net on the detached output, as a
    readout that measures the module without sending it gradients.
    """

    objective: LocalObjective

    def run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        """(the last block's output, the auxiliary net)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, image: torch.Tensor | None = None):
        h, head = self.run_blocks(x)
        if y is None:
            return h, head(h)
        logits = head(h.detach() if self.objective.detach_head else h)
        return h, logits, self.objective(h, logits, y, image)


class BlockWithHead(LocalPart):
    """Block j, its auxiliary head and its objective as one trainable part (decoupled mode). (Its children are
    named block and head, as decoupled states have always been saved; `objective` follows them.)"""

    def __init__(self, block: nn.Module, head: nn.Module, objective: LocalObjective):
        super().__init__()
        self.block = block
        self.head = head
        self.objective = objective

    def run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        return self.block(x), self.head


class BlocksThenHead(LocalPart):
    """Block(s) then a head as one trainable part (a greedy stage: block j and head j; e2e: every block and the
    last head), trained by `objective`. The blocks and the head are children named 0..n-1, as they were in the
    nn.Sequential this part used to be, so saved weights and states keep their names.

    `checkpoint_units` (e2e with grad_checkpoint): the units of the blocks, in order; during training each runs
    under torch.utils.checkpoint, so only unit inputs are kept for the backward pass and each unit's forward is
    recomputed there (BatchNorm statistics are updated once, by the first forward, as without checkpointing).
    """

    def __init__(self, *modules: nn.Module, objective: LocalObjective,
                 checkpoint_units: list[nn.Module] | None = None):
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)
        self.size = len(modules)
        self.objective = objective
        self.checkpoint_units = checkpoint_units  # a plain list: the units are registered as the blocks' children

    def run_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        if self.checkpoint_units is not None and torch.is_grad_enabled():
            for unit in self.checkpoint_units:
                x = checkpoint(unit, x, use_reentrant=False, context_fn=functools.partial(_recompute_context, unit))
        else:
            for i in range(self.size - 1):
                x = self._modules[str(i)](x)
        return x, self._modules[str(self.size - 1)]


def _recompute_context(unit: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """torch.utils.checkpoint's (forward, recomputation) contexts for `unit`: the recomputation leaves the unit's
    BatchNorm running statistics as the forward left them (it would update them a second time)."""
    return contextlib.nullcontext(), _kept_buffers(unit)


@contextlib.contextmanager
def _kept_buffers(unit: nn.Module) -> Iterator[None]:
    saved = [(buf, buf.clone()) for buf in unit.buffers()]
    try:
        yield  # the recomputation may end early, by an exception (torch.utils.checkpoint's early stop)
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


@dataclass
class Stage:
    """One training problem: `trainable(prefix(x))` (block output, logits) is fit to the labels by the local
    objective; `prefix` stays frozen.

    In decoupled mode `trainable` is a ModuleList of BlockWithHead parts, each fit on its predecessor's
    detached output. Each part holds its local objective.
    """

    index: int  # 0-based; the e2e and decoupled stages carry the last block's index
    name: str  # stage1, stage2, ... or e2e or decoupled
    prefix: nn.Module
    trainable: nn.Module

    @property
    def objectives(self) -> list[LocalObjective]:
        """The local objective of each part."""
        return [part.objective for part in self.parts]

    @property
    def needs_input(self) -> bool:
        """Whether a part's objective reads the input images (the trainer then hands them to the parts)."""
        return any(objective.needs_input for objective in self.objectives)

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

    def __init__(self, net: GreedyNet, mode: str = "greedy", objective: str = "ce", *, options: dict | None = None,
                 image_shape: tuple[int, int, int] | None = None, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, grad_checkpoint: bool = False):
        """`objective`: the registered local objective (config key `objective`) each block is trained on, with
        `options` (schema.objective_options); the e2e stage trains the whole net on the last block's.
        `image_shape` (C, H, W) of the input and the `mean`, `std` it was normalized with: what objectives with
        modules of their own need (ModuleSpec); `for_run` passes them. `grad_checkpoint` (e2e): the e2e part
        recomputes each unit's activations in the backward pass (BlocksThenHead). Raises ValueError for an unknown
        mode, UsageError for an unknown objective."""
        if mode not in ("greedy", "e2e", "decoupled"):
            raise ValueError(f"GreedyBuilder trains greedy, e2e or decoupled stages, not {mode!r}")
        self.net = net
        self.mode = mode
        self.grad_checkpoint = grad_checkpoint
        num = net.num_stages
        outs = [out for _, out in net.module_shapes(image_shape[0], image_shape[-1])] if image_shape else [None] * num
        units = tuple(net.unit_shapes(image_shape[0], image_shape[-1])) if image_shape else ()
        ends = list(itertools.accumulate(len(names) for names in net.module_units))
        self.objectives = [create_objective(objective, ModuleSpec(j, num, net.num_classes, outs[j], image_shape, mean,
                                                                  std, units, ends[j] - 1 if units else None),
                                            **(options or {}))
                           for j in range(num)]

    @classmethod
    def for_config(cls, cfg: Config, net: GreedyNet, image_shape: tuple[int, int, int],
                   mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> GreedyBuilder:
        """The builder of `cfg`: its mode, objective, objective settings and grad_checkpoint, for input images of
        `image_shape` (C, H, W) normalized with `mean`, `std` (None: unknown, which only InfoPro's forward
        refuses; --print-model and the cost counts need no data)."""
        return cls(net, cfg.mode, cfg.objective, options=objective_options(cfg), image_shape=image_shape, mean=mean,
                   std=std, grad_checkpoint=cfg.grad_checkpoint)

    @classmethod
    def for_run(cls, cfg: Config, net: GreedyNet, data: DataBundle) -> GreedyBuilder:
        """The builder of a run: `for_config` with the data's image shape and normalization."""
        return cls.for_config(cfg, net, (data.in_chans, data.img_size, data.img_size), data.mean or None,
                              data.std or None)

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
            units = net.units() if self.grad_checkpoint else None
            trainable = BlocksThenHead(*net.blocks, net.heads[last], objective=self.objectives[last],
                                       checkpoint_units=units)
            stage = Stage(last, "e2e", freeze_prefix(net, 0), trainable)
        elif self.mode == "decoupled":
            parts = nn.ModuleList(BlockWithHead(b, h, o) for b, h, o in zip(net.blocks, net.heads, self.objectives,
                                                                            strict=True))
            stage = Stage(last, "decoupled", freeze_prefix(net, 0), parts)
        else:
            part = BlocksThenHead(net.blocks[i], net.heads[i], objective=self.objectives[i])
            stage = Stage(i, f"stage{i + 1}", freeze_prefix(net, i), part)
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
