"""The optimizer and LR schedule of a trained part, built by timm's factories from the config's keys.

Ground floor: the config schema checks `opt` and `sched` by building them once on a dummy parameter with these very
functions, and the trainer and the pipeline build the real ones with them.
"""

from __future__ import annotations

from typing import Protocol

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn


class OptimizerKeys(Protocol):
    """The config keys these factories read (greedy.config.Config has them all)."""

    opt: str
    lr: float
    momentum: float
    weight_decay: float
    sched: str
    decay_epochs: float
    decay_rate: float
    warmup_epochs: int


def make_optimizer(cfg: OptimizerKeys, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer `cfg.opt` over every parameter of `model` (weight decay on all of them, as the paper).

    Raises what timm raises for an unknown name or a refused setting (ValueError, TypeError, AssertionError).
    """
    return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=False)


def make_scheduler(cfg: OptimizerKeys, optimizer: torch.optim.Optimizer, epochs: int) -> Scheduler:
    """timm's LR schedule `cfg.sched` over `epochs` epochs, stepped once per epoch with the epoch number.

    Raises what timm raises for a refused setting (ValueError, TypeError, AssertionError).
    """
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, decay_epochs=cfg.decay_epochs,
                                       decay_rate=cfg.decay_rate, warmup_epochs=cfg.warmup_epochs)
    return scheduler
