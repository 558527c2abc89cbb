"""The step bench: per greedy stage, the trainer's step next to its floors (bare loop, graph prefix, cached, block
alone), interleaved round-robin, with activation memory; one e2e and one decoupled step; the data loader's images/s."""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from greedy.builder import GreedyBuilder
from greedy.cache import autocast_dtype, cache_dtype
from greedy.datasets import (
    DataBundle,
    TensorImageDataset,
    create_datasets,
    create_loaders,
    crop_flip_transform,
    dataset_info,
    default_workers,
)
from greedy.errors import UsageError
from greedy.models import GreedyNet, create_greedy_net
from greedy.optim import make_optimizer
from greedy.profiling import interleaved_times, median, paired_ratio, peak_cuda_bytes, saved_tensor_bytes
from greedy.schema import Config
from greedy.trainer import as_input, decoupled_step, train_step
from scripts.benchmarks.common import MiB, markdown

STAGE_VARIANTS = ("trainer", "bare", "graph_prefix", "cached", "alone")


def autocast_factory(cfg: Config, device: torch.device) -> Callable:
    dtype = autocast_dtype(cfg)
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext


class BareStep:
    """The hand-written loop: optional no-grad prefix, forward, cross-entropy, backward, step, zero_grad."""

    def __init__(self, prefix: nn.Module | None, model: nn.Module, optimizer, autocast: Callable,
                 graph_prefix: bool = False, scaler: torch.amp.GradScaler | None = None):
        self.prefix, self.model, self.optimizer = prefix, model, optimizer
        self.autocast, self.graph_prefix, self.scaler = autocast, graph_prefix, scaler

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.prefix is not None:
            with torch.set_grad_enabled(self.graph_prefix), self.autocast():
                x = self.prefix(x).detach()
        with self.autocast():
            loss = F.cross_entropy(self.model(x)[1], y)  # a part returns (block output, logits)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def weights_of(*modules: nn.Module) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def stage_variants(cfg: Config, net: GreedyNet, j: int, accelerator: Accelerator, x: torch.Tensor,
                   y: torch.Tensor) -> tuple[dict[str, Callable], list[torch.Tensor]]:
    """The five step variants of greedy stage j (each on its own copy of the net), and every weight they hold."""
    autocast = autocast_factory(cfg, accelerator.device)
    scaler = torch.amp.GradScaler(accelerator.device.type) if cfg.mixed_precision == "fp16" else None
    ours, floor = copy.deepcopy(net), copy.deepcopy(net)
    stage = GreedyBuilder(ours).stage(j)
    model = stage.trainable
    model, optimizer = accelerator.prepare(model, make_optimizer(cfg, model))
    bare = GreedyBuilder(floor).stage(j)
    bare_opt = make_optimizer(cfg, bare.trainable)
    graph_prefix = copy.deepcopy(bare.prefix).requires_grad_(True)
    with torch.no_grad(), autocast():
        feats = stage.prefix(x).to(cache_dtype(cfg))
    feats = as_input(feats, cfg.channels_last)
    ident = nn.Identity()
    floor_step = BareStep(bare.prefix, bare.trainable, bare_opt, autocast, scaler=scaler)
    graph_step = BareStep(graph_prefix, bare.trainable, bare_opt, autocast, graph_prefix=True, scaler=scaler)
    alone_step = BareStep(None, bare.trainable, bare_opt, autocast, scaler=scaler)
    steps = {
        "trainer": lambda: train_step(stage.prefix, model, optimizer, accelerator, x, y),
        "bare": lambda: floor_step(x, y),
        "graph_prefix": lambda: graph_step(x, y),
        "cached": lambda: train_step(ident, model, optimizer, accelerator, feats, y),
        "alone": lambda: alone_step(feats, y),
    }
    return steps, weights_of(ours, floor, graph_prefix)


def full_net_variants(cfg: Config, net: GreedyNet, accelerator: Accelerator, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[dict[str, Callable], list[torch.Tensor]]:
    """One end-to-end step and one decoupled step of the full net, through the trainer's functions."""
    e2e_net, dec_net = copy.deepcopy(net), copy.deepcopy(net)
    e2e = GreedyBuilder(e2e_net, "e2e").stage(0)
    e2e_model, e2e_opt = accelerator.prepare(e2e.trainable, make_optimizer(cfg, e2e.trainable))
    decoupled, _ = decoupled_variant(cfg, GreedyBuilder(dec_net, "decoupled"), accelerator, x, y)
    steps = {"e2e": lambda: train_step(e2e.prefix, e2e_model, e2e_opt, accelerator, x, y), "decoupled": decoupled}
    return steps, weights_of(e2e_net, dec_net)


def decoupled_variant(cfg: Config, builder: GreedyBuilder, accelerator: Accelerator, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Callable, list[nn.Module]]:
    """One decoupled step of the builder's net through greedy.trainer.decoupled_step (each part prepared with its
    own optimizer; the images handed to objectives that read them), and the parts (their weights, objectives'
    modules included, are not activations)."""
    stage = builder.stage(0)
    parts = stage.parts
    prepared = accelerator.prepare(*parts, *[make_optimizer(cfg, p) for p in parts])
    models, optimizers = list(prepared[:len(parts)]), list(prepared[len(parts):])
    return (lambda: decoupled_step(stage.prefix, models, optimizers, accelerator, x, y, stage.needs_input)), parts




def loader_throughput(cfg: Config, batches: int) -> dict:
    """Images/s of the config's training DataLoader (its real data when present, else random tensors)."""
    info = dataset_info(cfg.dataset)
    try:
        train_set = create_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment=cfg.augment).train
        source = f"{cfg.dataset} from {cfg.data_dir}"
    except UsageError:
        size = cfg.img_size or info.img_size
        n = cfg.batch_size * batches
        images = torch.randn(n, info.in_chans, size, size)
        transform = crop_flip_transform(size) if cfg.augment == "crop_flip" else None
        train_set = TensorImageDataset(images, torch.randint(0, info.num_classes, (n,)), transform)
        source = f"random {info.in_chans}x{size}x{size} tensors (augment {cfg.augment})"
    bundle = DataBundle(train_set, train_set, info.num_classes, info.in_chans, cfg.img_size or info.img_size)
    workers = default_workers(cfg.dataset, cfg.num_workers)
    loader, _ = create_loaders(bundle, cfg.batch_size, num_workers=workers, pin_memory=cfg.pin_memory,
                               persistent_workers=False)
    seen, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader):
        seen += len(x)
        if i + 1 == batches:
            break
    seconds = time.perf_counter() - t0
    return {"source": source, "num_workers": workers, "images": seen, "images_per_s": seen / seconds}


def bench_steps(cfg: Config, args: argparse.Namespace, device: torch.device) -> dict:
    info = dataset_info(cfg.dataset)
    size = cfg.img_size or info.img_size
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    net = create_greedy_net(cfg, num_classes=info.num_classes, in_chans=info.in_chans).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = as_input(torch.randn(cfg.batch_size, info.in_chans, size, size, device=device), cfg.channels_last)
    y = torch.randint(0, info.num_classes, (cfg.batch_size,), device=device)
    stages = [int(s) - 1 for s in args.stages.split(",")] if args.stages else list(range(net.num_stages))

    variants, weights = {}, []
    for j in stages:
        steps, held = stage_variants(cfg, net, j, accelerator, x, y)
        variants.update({f"s{j + 1}/{name}": fn for name, fn in steps.items()})
        weights += held
    steps, held = full_net_variants(cfg, net, accelerator, x, y)
    variants.update(steps)
    weights += held

    times = interleaved_times(variants, args.steps, args.warmup, device)
    saved = {name: saved_tensor_bytes(fn, weights) for name, fn in variants.items()}
    peak = {name: peak_cuda_bytes(fn, device) for name, fn in variants.items()}
    ms = {name: 1000 * median(t) for name, t in times.items()}
    return {"stages": [j + 1 for j in stages], "median_ms": ms, "saved_bytes": saved, "peak_cuda_bytes": peak,
            "all_ms": {k: [1000 * t for t in v] for k, v in times.items()}, "image_size": size}


def stage_rows(result: dict, batch: int) -> list[dict]:
    """Per stage: median step times, ratios (median over rounds of same-round ratios), activation memory."""
    ms, saved, times = result["median_ms"], result["saved_bytes"], result["all_ms"]
    rows = []
    for s in result["stages"]:
        m = {v: ms[f"s{s}/{v}"] for v in STAGE_VARIANTS}
        b = {v: saved[f"s{s}/{v}"] for v in STAGE_VARIANTS}
        ratio = lambda a, c, s=s: paired_ratio(times, f"s{s}/{a}", f"s{s}/{c}")  # noqa: E731
        rows.append({
            "stage": s, "trainer_ms": m["trainer"], "bare_ms": m["bare"], "trainer/bare": ratio("trainer", "bare"),
            "graph_prefix_ms": m["graph_prefix"], "cached_ms": m["cached"], "alone_ms": m["alone"],
            "cached/alone": ratio("cached", "alone"), "trainer/alone": ratio("trainer", "alone"),
            "img_per_s": batch / m["trainer"] * 1000,
            "saved_MiB": b["trainer"] / MiB, "alone_MiB": b["alone"] / MiB, "saved==alone": b["trainer"] == b["alone"],
            "graph_prefix_MiB": b["graph_prefix"] / MiB, "saved/e2e": b["trainer"] / saved["e2e"],
            "saved/graph_prefix": b["trainer"] / b["graph_prefix"],
            **peak_columns(result, f"s{s}/trainer"),
        })
    for name in ("e2e", "decoupled"):
        rows.append({"stage": name, "trainer_ms": ms[name], "img_per_s": batch / ms[name] * 1000,
                     "saved_MiB": saved[name] / MiB, **peak_columns(result, name)})
    return rows


def peak_columns(result: dict, variant: str) -> dict:
    """Peak CUDA memory of one variant's step, as a column (nothing off GPU)."""
    peak = result["peak_cuda_bytes"][variant]
    return {} if peak is None else {"peak_cuda_MiB": peak / MiB}


def run(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the step bench, with the data loader's throughput."""
    loader = loader_throughput(cfg, args.loader_batches)
    result = bench_steps(cfg, args, device)
    rows = stage_rows(result, cfg.batch_size)
    table = markdown(rows) + (f"\n\ndata loader: {loader['images_per_s']:.0f} images/s ({loader['source']}, "
                              f"num_workers {loader['num_workers']}, {loader['images']} images)")
    return {"loader": loader, "steps": result, "rows": rows}, table
