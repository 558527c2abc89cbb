"""The objective bench: what each local objective costs per module, and that it costs nothing outside it.

For every registered objective (ce, predsim, infopro_ce, infopro_contrast, ...) and every local module j:
  trainer   greedy.trainer.train_step of greedy stage j with that objective: the frozen prefix under no_grad, then
            block j, its auxiliary net and the objective's own modules (InfoPro's decoder and head, PredSim's
            conv and linear layer), forward and backward, optimizer step
  alone     the same module with the same objective, hand-written, on the prefix's output computed beforehand:
            the floor of that module's step
and per objective one decoupled step of the whole net (greedy.trainer.decoupled_step). All are interleaved
round-robin, so machine noise hits each alike; activation memory is the bytes autograd saves for backward.

"The objective adds no work outside its module" is then measured, not assumed: the trainer saves exactly the
bytes of its module alone (`saved==alone`); its time over the module alone (`trainer-alone_ms`, the frozen
prefix's forward, which grows with depth) is the same whatever the objective; and a decoupled step
saves no more than the sum of its modules alone (less: a module's input is its predecessor's output, and InfoPro's
modules share the images). `over ce` is the objective's own cost: its
module's step next to the same module with ce.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable

import torch
from accelerate import Accelerator

from greedy.builder import GreedyBuilder
from greedy.datasets.source import data_source
from greedy.models import GreedyNet, create_greedy_net
from greedy.objectives import total_loss
from greedy.optim import make_optimizer
from greedy.profiling import interleaved_times, median, paired_ratio, saved_tensor_bytes
from greedy.registry import OBJECTIVES, check_choice
from greedy.schema import Config
from greedy.trainer import as_input, train_step
from scripts.benchmarks import steps
from scripts.benchmarks.common import MiB, markdown
from scripts.benchmarks.steps import weights_of


@dataclasses.dataclass
class Inputs:
    """One batch of normalized images `x` (B, C, H, W), labels `y` (B,), and the mean and std `x` was normalized
    with (what InfoPro's decoder de-normalizes its target with)."""

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])


def make_inputs(cfg: Config, num_classes: int, in_chans: int, size: int, device: torch.device) -> Inputs:
    """Uniform pixels in [0, 1] normalized with the data set's published statistics (0.5, 0.25 if it has none),
    so that the de-normalized images are real pixel values."""
    stats = data_source(cfg.dataset).stats or ((0.5,) * in_chans, (0.25,) * in_chans)
    mean, std = (torch.tensor(s, device=device).view(1, -1, 1, 1) for s in stats)
    generator = torch.Generator().manual_seed(cfg.seed)
    pixels = torch.rand(cfg.batch_size, in_chans, size, size, generator=generator).to(device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), generator=generator).to(device)
    return Inputs(as_input((pixels - mean) / std, cfg.channels_last), y, *stats)


def builder(cfg: Config, net: GreedyNet, objective: str, mode: str, inputs: Inputs) -> GreedyBuilder:
    """`cfg`'s builder for a copy of `net`, with `objective` in `mode`."""
    cfg = dataclasses.replace(cfg, objective=objective, mode=mode)
    return GreedyBuilder.for_config(cfg, copy.deepcopy(net), inputs.shape, inputs.mean, inputs.std)


def module_variants(cfg: Config, net: GreedyNet, objective: str, j: int, accelerator: Accelerator,
                    inputs: Inputs) -> tuple[dict[str, Callable], list[torch.Tensor]]:
    """The trainer's step of greedy stage j with `objective`, and module j alone with it on the prefix's output
    (each on its own copy of the net); every weight they hold (left out of the activation bytes)."""
    x, y = inputs.x, inputs.y
    ours, floor = builder(cfg, net, objective, "greedy", inputs), builder(cfg, net, objective, "greedy", inputs)
    stage, bare = ours.stage(j), floor.stage(j)
    model, optimizer = accelerator.prepare(stage.trainable, make_optimizer(cfg, stage.trainable))
    bare_opt = make_optimizer(cfg, bare.trainable)
    with torch.no_grad(), accelerator.autocast():
        features = bare.prefix(x)
    image = x if bare.needs_input else None

    def alone() -> None:
        with accelerator.autocast():
            _, _, terms = bare.trainable(features, y, image)
        total_loss(terms).backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    fns = {"trainer": lambda: train_step(stage.prefix, model, optimizer, accelerator, x, y, stage.needs_input),
           "alone": alone}
    return fns, weights_of(ours.net, floor.net, *stage.parts, *bare.parts)


def decoupled_variant(cfg: Config, net: GreedyNet, objective: str, accelerator: Accelerator,
                      inputs: Inputs) -> tuple[Callable, list[torch.Tensor]]:
    """One decoupled step of the whole net, every module on `objective`, through the trainer's function."""
    dec = builder(cfg, net, objective, "decoupled", inputs)
    step, parts = steps.decoupled_variant(cfg, dec, accelerator, inputs.x, inputs.y)
    return step, weights_of(dec.net, *parts)


def objective_params(cfg: Config, net: GreedyNet, objective: str, inputs: Inputs) -> list[int]:
    """Parameters of the objective's own modules, per local module."""
    return [sum(p.numel() for p in o.parameters()) for o in builder(cfg, net, objective, "greedy", inputs).objectives]


def bench_objectives(cfg: Config, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step ms, all step ms, and saved bytes of every variant of every objective."""
    info = data_source(cfg.dataset).info
    size = cfg.img_size or info.img_size
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    net = create_greedy_net(cfg, num_classes=info.num_classes, in_chans=info.in_chans).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    inputs = make_inputs(cfg, info.num_classes, info.in_chans, size, device)
    objectives = args.objectives.split(",") if args.objectives else list(OBJECTIVES)
    for name in objectives:
        check_choice("objective", name, OBJECTIVES)
    variants: dict[str, Callable] = {}
    weights: list[torch.Tensor] = []
    for name in objectives:
        for j in range(net.num_stages):
            fns, held = module_variants(cfg, net, name, j, accelerator, inputs)
            variants.update({f"{name}/m{j + 1}/{v}": fn for v, fn in fns.items()})
            weights += held
        variants[f"{name}/decoupled"], held = decoupled_variant(cfg, net, name, accelerator, inputs)
        weights += held
    times = interleaved_times(variants, args.steps, args.warmup, device)
    return {"objectives": objectives, "num_modules": net.num_stages, "image_size": size,
            "median_ms": {k: 1000 * median(t) for k, t in times.items()},
            "all_ms": {k: [1000 * t for t in v] for k, v in times.items()},
            "saved_bytes": {k: saved_tensor_bytes(fn, weights) for k, fn in variants.items()},
            "objective_params": {name: objective_params(cfg, net, name, inputs) for name in objectives}}


def objective_rows(result: dict, batch: int) -> list[dict]:
    """Per objective and module: step ms and saved MiB of the trainer and of the module alone, their ratio, the
    objective's cost over ce; per objective: the decoupled step against the sum of its modules alone."""
    ms, saved, times = result["median_ms"], result["saved_bytes"], result["all_ms"]
    base = "ce" if "ce" in result["objectives"] else None
    rows = []
    for name in result["objectives"]:
        for j in range(1, result["num_modules"] + 1):
            key = f"{name}/m{j}"
            row = {"objective": name, "module": j, "trainer_ms": ms[f"{key}/trainer"], "alone_ms": ms[f"{key}/alone"],
                   "trainer/alone": paired_ratio(times, f"{key}/trainer", f"{key}/alone"),
                   "trainer-alone_ms": median([a - b for a, b in zip(times[f"{key}/trainer"], times[f"{key}/alone"],
                                                                     strict=True)]),
                   "img_per_s": batch / ms[f"{key}/trainer"] * 1000,
                   "saved_MiB": saved[f"{key}/trainer"] / MiB, "alone_MiB": saved[f"{key}/alone"] / MiB,
                   "saved==alone": saved[f"{key}/trainer"] == saved[f"{key}/alone"],
                   "objective_params": result["objective_params"][name][j - 1]}
            if base:
                ref = f"{base}/m{j}"
                row["time over ce"] = paired_ratio(times, f"{key}/alone", f"{ref}/alone")
                row["MiB over ce"] = (saved[f"{key}/alone"] - saved[f"{ref}/alone"]) / MiB
            rows.append(row)
        alone = [f"{name}/m{j}/alone" for j in range(1, result["num_modules"] + 1)]
        rows.append({"objective": name, "module": "decoupled", "trainer_ms": ms[f"{name}/decoupled"],
                     "alone_ms": sum(ms[a] for a in alone),
                     "trainer/alone": ms[f"{name}/decoupled"] / sum(ms[a] for a in alone),
                     "img_per_s": batch / ms[f"{name}/decoupled"] * 1000,
                     "saved_MiB": saved[f"{name}/decoupled"] / MiB, "alone_MiB": sum(saved[a] for a in alone) / MiB,
                     "saved==alone": None,
                     "objective_params": sum(result["objective_params"][name])})
    return rows


def run(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the objective bench."""
    result = bench_objectives(cfg, args, device)
    rows = objective_rows(result, cfg.batch_size)
    note = ("\n\ndecoupled rows: alone = the sum of the modules alone (ms: ratio of medians; MiB: the sum of their "
            "saved bytes, which the step's own count can only undercut where modules share a tensor)")
    return {"objective_compare": {"result": result, "rows": rows}}, markdown(rows) + note
