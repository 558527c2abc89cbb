"""What a greedy stage costs next to its floors: step time, activation memory, data-loader throughput.

    python scripts/bench.py                                  # CIFAR-10 k=3 paper net, random 32x32 data, batch 128
    python scripts/bench.py -c configs/fashion_mnist_k2.yaml --data-dir ../shared/data/fashion-mnist
    python scripts/bench.py -c configs/fashion_mnist_k2.yaml --data-dir ../shared/data/fashion-mnist \\
        --cache-compare --epochs 1                           # real training, all stages, with and without the cache
    python scripts/bench.py --device cuda --precision-compare   # fp32 vs bf16 + channels_last: img/s, peak memory
    python scripts/bench.py --input-compare --threads 1         # crop + flip input: per-image DataLoader vs device
    python scripts/bench.py --imagenet-decode --threads 1       # ImageNet JPEG decode + augment, images/s per worker
    python scripts/bench.py -c configs/fashion_mnist_compare.yaml --data-dir ../shared/data/fashion-mnist \\
        --pipeline-compare --epochs 1                        # decoupled: pipelined over 2 processes vs 1 process

Per greedy stage j, interleaved round-robin with every other variant so that machine noise hits all alike:
  trainer        greedy.trainer.train_step on images (frozen prefix under no_grad), with a prepared Accelerator
  bare           the same work as a hand-written PyTorch loop: the overhead floor
  graph_prefix   the prefix run with autograd, then detached (the original recipe)
  cached         greedy.trainer.train_step on precomputed prefix outputs (what a cached stage runs)
  alone          block j + head j alone on inputs of that shape, hand-written: the floor of a stage
plus one end-to-end step and one decoupled step of the full net. Activation memory is the bytes autograd
saves for backward during one step (distinct storages, parameters and buffers excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greedy.builder import GreedyBuilder  # noqa: E402
from greedy.cache import autocast_dtype, cache_dtype  # noqa: E402
from greedy.checkpoint import RunDir  # noqa: E402
from greedy.config import build_config, load_yaml  # noqa: E402
from greedy.datasets import (  # noqa: E402
    DataBundle,
    Normalization,
    TensorImageDataset,
    create_datasets,
    create_loaders,
    crop_flip_transform,
    dataset_info,
    default_workers,
)
from greedy.errors import UsageError  # noqa: E402
from greedy.models import GreedyNet, create_greedy_net  # noqa: E402
from greedy.optim import make_optimizer  # noqa: E402
from greedy.profiling import (  # noqa: E402
    interleaved_times,
    median,
    paired_ratio,
    peak_cuda_bytes,
    saved_tensor_bytes,
)
from greedy.schema import Config  # noqa: E402
from greedy.trainer import as_input, decoupled_step, train_step  # noqa: E402

STAGE_VARIANTS = ("trainer", "bare", "graph_prefix", "cached", "alone")
MiB = 2**20


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default=str(ROOT / "configs/cifar10_k3.yaml"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--stages", help="1-based stages to measure, e.g. 1,3 (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--data-dir", help="the config's data set, for the loader throughput and --cache-compare")
    p.add_argument("--loader-batches", type=int, default=50, help="batches read to time the data loader")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--precision-compare", action="store_true",
                   help="instead: our step in fp32 and in bf16 + channels_last, images/s and peak memory per stage")
    p.add_argument("--cache-compare", action="store_true",
                   help="instead: train all stages with train.py --cache off, then on, on the config's real data")
    p.add_argument("--input-compare", action="store_true",
                   help="instead: crop + flip input images/s, per-image DataLoader vs the device path, and the "
                        "input's share of a stage-1 step")
    p.add_argument("--imagenet-decode", action="store_true",
                   help="instead: ImageNet-sized JPEGs decoded + augmented by the training transform, images/s for "
                        "0, 1 and 2 loader workers")
    p.add_argument("--images", type=int, default=256, help="--imagenet-decode: JPEGs written and read")
    p.add_argument("--epochs", type=int, help="--cache-compare, --pipeline-compare: epochs per stage (default: the "
                                              "config's)")
    p.add_argument("--train-args", default="", help="--cache-compare, --pipeline-compare: more train.py arguments, "
                                                    "quoted")
    p.add_argument("--work-dir", help="--cache-compare, --pipeline-compare: keep the runs and their logs here "
                                      "(default: a temp dir)")
    p.add_argument("--pipeline-compare", action="store_true",
                   help="instead: a decoupled run pipelined over 2 processes (1 thread each) vs 1 process with 1 and 2 "
                        "threads and vs data-parallel decoupled over 2 processes at the same global batch")
    p.add_argument("--sequential", action="store_true",
                   help="--cache-compare: run off, then on (default: both at once, one thread each)")
    return p.parse_args(argv)


def _relative(path: str) -> str:
    """A path inside the repository as written from its root (what the docs show), others unchanged."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def load_config(args: argparse.Namespace) -> Config:
    values = load_yaml(args.config)
    values.update(batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                  channels_last=args.channels_last)
    if args.data_dir:
        values["data_dir"] = args.data_dir
    return build_config(values, check_data=False)


# ---------------------------------------------------------------------------------------------- machine


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------------------------- steps


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
            loss = F.cross_entropy(self.model(x), y)
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
    dec = GreedyBuilder(dec_net, "decoupled").stage(0)
    parts = dec.parts
    prepared = accelerator.prepare(*parts, *[make_optimizer(cfg, p) for p in parts])
    models, optimizers = list(prepared[:len(parts)]), list(prepared[len(parts):])
    steps = {
        "e2e": lambda: train_step(e2e.prefix, e2e_model, e2e_opt, accelerator, x, y),
        "decoupled": lambda: decoupled_step(dec.prefix, models, optimizers, accelerator, x, y),
    }
    return steps, weights_of(e2e_net, dec_net)


# ---------------------------------------------------------------------------------------------- data loader


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


def consume(loader, device: torch.device) -> int:
    """Read one pass of `loader` onto `device` (as training would): the number of images."""
    seen = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        seen += len(x)
    return seen


def input_compare(cfg: Config, args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of the paper's crop + flip input at the config's shape: the per-image path (a DataLoader calling
    torchvision's RandomCrop + flip on each tensor, 0 and 1 workers) vs the device path (DeviceLoader: the
    normalized images on the device, one table lookup and one gather per batch), passes interleaved round-robin;
    then the input's share of one stage-1 training step (`train_step` of the config's net at the same batch size):
    input / (input + step)."""
    info = dataset_info(cfg.dataset)
    size, chans, batch = cfg.img_size or info.img_size, info.in_chans, cfg.batch_size
    n = batch * args.loader_batches
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=gen)
    targets = torch.randint(0, info.num_classes, (n,), generator=gen)
    norm = Normalization(255.0, (0.5,) * chans, (0.25,) * chans)
    train = TensorImageDataset(norm(pixels), targets, crop_flip_transform(size), crop_padding=4)
    bundle = DataBundle(train, train, info.num_classes, chans, size)
    per_image, _ = create_loaders(bundle, batch)
    one_worker, _ = create_loaders(bundle, batch, num_workers=1, persistent_workers=True)
    on_device, _ = create_loaders(bundle, batch, device=device)
    passes = {"per_image": lambda: consume(per_image, device),
              "per_image_1_worker": lambda: consume(one_worker, device),
              "device": lambda: consume(on_device, device)}
    times = interleaved_times(passes, args.steps, warmup=1, device=device)
    rows = [{"input path": name, "images/s": n / median(t),
             "speedup vs per_image": paired_ratio(times, "per_image", name)} for name, t in times.items()]

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    net = create_greedy_net(cfg, num_classes=info.num_classes, in_chans=chans).to(device)
    stage = GreedyBuilder(net).stage(0)
    model, optimizer = accelerator.prepare(stage.trainable, make_optimizer(cfg, stage.trainable))
    x, y = next(iter(on_device))
    step = interleaved_times({"step": lambda: train_step(stage.prefix, model, optimizer, accelerator, x, y)},
                             args.steps, args.warmup, device)["step"]
    input_s = median(times["device"]) / len(on_device)
    share = {"stage1_step_ms": 1000 * median(step), "device_input_ms_per_batch": 1000 * input_s,
             "per_image_input_ms_per_batch": 1000 * median(times["per_image"]) / len(per_image),
             "input_share": input_s / (input_s + median(step))}
    return {"rows": rows, "share": share, "images": n, "image_shape": [chans, size, size],
            "all_s": {k: list(v) for k, v in times.items()}}


def imagenet_decode(args: argparse.Namespace) -> dict:
    """Images/s of the ImageNet training pipeline (CheckedImageFolder: JPEG decode + RandomResizedCrop 224 + flip
    + normalize) on `--images` JPEGs written here at ImageNet's typical size (500 x 375, quality 90), read by a
    DataLoader with 0, 1 and 2 workers: one worker's rate is what a GPU's images/s is divided by to size
    num_workers. The JPEGs are smooth synthetic scenes (a random 16 x 12 image upsampled, plus noise): they decode
    at about the cost of photos of that size (decode time grows with pixels and coefficients, both comparable)."""
    from PIL import Image

    from greedy.datasets import CheckedImageFolder
    from greedy.datasets.transforms import imagenet_train_transform

    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train" / "n00000000"
        folder.mkdir(parents=True)
        nbytes = 0
        for i in range(args.images):
            small = torch.rand(1, 3, 12, 16, generator=gen)
            big = F.interpolate(small, size=(375, 500), mode="bicubic", align_corners=False)[0]
            big = (big + 0.08 * torch.randn(big.shape, generator=gen)).clamp(0, 1)
            path = folder / f"img_{i}.JPEG"
            Image.fromarray((big.permute(1, 2, 0) * 255).to(torch.uint8).numpy()).save(path, quality=90)
            nbytes += path.stat().st_size
        dataset = CheckedImageFolder(Path(tmp) / "train", transform=imagenet_train_transform(224))
        rows = []
        for workers in (0, 1, 2):
            loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, shuffle=True)
            consume(loader, torch.device("cpu"))  # warm: page cache, worker start-up
            t0 = time.perf_counter()
            seen = consume(loader, torch.device("cpu"))
            seconds = time.perf_counter() - t0
            rows.append({"num_workers": workers, "images/s": seen / seconds,
                         "images/s per worker": seen / seconds / max(workers, 1)})
    return {"rows": rows, "images": args.images, "mean_jpeg_kB": nbytes / args.images / 1000}


# ---------------------------------------------------------------------------------------------- the bench


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


PRECISIONS = {"fp32": ("no", False), "bf16+channels_last": ("bf16", True)}


def precision_rows(results: dict[str, dict], batch: int) -> list[dict]:
    """Per stage (and e2e, decoupled): our step's images/s and peak memory in fp32 and in bf16 + channels_last."""
    (a, ra), (b, rb) = results.items()
    names = [f"s{s}/trainer" for s in ra["stages"]] + ["e2e", "decoupled"]
    rows = []
    for name in names:
        ms_a, ms_b = ra["median_ms"][name], rb["median_ms"][name]
        row = {"stage": name.removesuffix("/trainer").removeprefix("s"), f"{a} img/s": batch / ms_a * 1000,
               f"{b} img/s": batch / ms_b * 1000, "speedup": ms_a / ms_b,
               f"{a} saved MiB": ra["saved_bytes"][name] / MiB, f"{b} saved MiB": rb["saved_bytes"][name] / MiB}
        for label, r in ((a, ra), (b, rb)):
            if r["peak_cuda_bytes"][name] is not None:
                row[f"{label} peak MiB"] = r["peak_cuda_bytes"][name] / MiB
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: ("" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}")  # noqa: E731
                     if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- cache compare


def train_command(args: argparse.Namespace, cache: str, out: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "-c", args.config, "--cache", cache, "--out-dir", str(out),
           "--name", f"cache-{cache}", "--no-progress"]
    for flag, value in (("--data-dir", args.data_dir), ("--epochs", args.epochs)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.mixed_precision != "no":
        cmd += ["--mixed-precision", args.mixed_precision]
    if args.channels_last:
        cmd += ["--channels-last"]
    return cmd + shlex.split(args.train_args)


def run_result(cmd: list[str], returncode: int, wall: float, run: Path, log: Path) -> dict:
    """A finished train.py run: wall time, per-stage step and stage times, cache times, test accuracy."""
    stdout = log.read_text()
    if returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{stdout}")
    records = RunDir(run).read_metrics()  # epoch records
    summary = json.loads((run / "summary.json").read_text())
    stages = sorted({r["stage"] for r in records})
    step = {s: median([r["step_time"] for r in records if r["stage"] == s]) for s in stages}
    stage_s = {s: max(r["time"] for r in records if r["stage"] == s) for s in stages}  # includes its cache build
    cache_s = {s: max(r.get("cache_time", 0.0) for r in records if r["stage"] == s) for s in stages}
    return {"command": shlex.join(["python", "train.py", *cmd[2:]]), "wall_s": wall,  # portable, as in the docs
            "step_ms": {s: 1000 * v for s, v in step.items()},
            "stage_s": stage_s, "cache_s": cache_s, "stage_test_acc": summary["stage_test_acc"],
            "cache_lines": re.findall(r"^cache: .*$", stdout, re.M)}


def run_all(commands: dict[str, list[str]], env: dict, logs: Path, sequential: bool) -> dict[str, tuple[int, float]]:
    """Run the commands (all at once, or one after the other): (return code, wall seconds) of each."""
    done: dict[str, tuple[int, float]] = {}
    for group in [[name] for name in commands] if sequential else [list(commands)]:
        procs = {name: (subprocess.Popen(commands[name], cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                         stdout=(logs / f"{name}.log").open("w")), time.perf_counter())
                 for name in group}
        while any(name not in done for name in group):
            for name, (proc, t0) in procs.items():
                if name not in done and proc.poll() is not None:
                    done[name] = (proc.returncode, time.perf_counter() - t0)
            time.sleep(0.2)
    return done


def cache_compare(args: argparse.Namespace) -> dict:
    """train.py --cache off and on, started together (each with --threads threads, default 1) so that whatever
    else runs on the machine slows both alike; or one after the other with --sequential."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    threads = args.threads or (None if args.sequential else 1)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with (contextlib.nullcontext(args.work_dir) if args.work_dir
          else tempfile.TemporaryDirectory(prefix="bench-cache-")) as tmp:
        out = Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        commands = {f"cache-{c}": train_command(args, c, out) for c in ("off", "on")}
        done = run_all(commands, env, out, args.sequential)
        runs = {name.removeprefix("cache-"): run_result(cmd, *done[name], out / name, out / f"{name}.log")
                for name, cmd in commands.items()}
    off, on = runs["off"], runs["on"]
    rows = [{"stage": s, "off_step_ms": off["step_ms"][s], "on_step_ms": on["step_ms"][s],
             "off/on": off["step_ms"][s] / on["step_ms"][s], "off_stage_s": off["stage_s"][s],
             "on_stage_s": on["stage_s"][s], "on_cache_build_s": on["cache_s"][s],
             "off_test_acc": off["stage_test_acc"][s - 1],
             "on_test_acc": on["stage_test_acc"][s - 1]} for s in sorted(off["step_ms"])]
    rows.append({"stage": "all stages (incl. cache builds)", "off_stage_s": sum(off["stage_s"].values()),
                 "on_stage_s": sum(on["stage_s"].values()), "on_cache_build_s": sum(on["cache_s"].values())})
    rows.append({"stage": "wall (process)", "off_stage_s": off["wall_s"], "on_stage_s": on["wall_s"]})
    return {"runs": runs, "rows": rows, "threads_per_run": threads, "concurrent": not args.sequential}


LAUNCH_2 = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
# name: (processes, threads per process, train.py arguments beyond the shared ones)
PIPELINE_VARIANTS = {
    "pipelined 2 processes x 1 thread": (2, 1, ["--pipeline", "2"]),
    "sequential 1 process x 1 thread": (1, 1, []),
    "sequential 1 process x 2 threads": (1, 2, []),
    "data parallel 2 processes x 1 thread": (2, 1, []),  # --batch-size halved: the same global batch
}


def pipeline_compare(args: argparse.Namespace, cfg: Config) -> dict:
    """train.py --mode decoupled four ways, one after the other (each alone on the machine): pipelined over 2
    processes, sequential in 1 process with 1 and with 2 threads, and data-parallel over 2 processes at the same
    global batch. Time is the run's training time (summary total_time_s: its epochs, evaluation included, without
    process start-up); the pipelined run's processes report their busy fraction, peak memory and block bytes."""
    with (contextlib.nullcontext(args.work_dir) if args.work_dir
          else tempfile.TemporaryDirectory(prefix="bench-pipeline-")) as tmp:
        out = Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        runs = {}
        for i, (name, (procs, threads, extra)) in enumerate(PIPELINE_VARIANTS.items()):
            batch = cfg.batch_size // 2 if procs == 2 and not extra else cfg.batch_size
            launch = LAUNCH_2 if procs == 2 else []
            rest = ["-c", args.config, "--mode", "decoupled", "--batch-size", str(batch), "--out-dir", str(out),
                    "--name", f"v{i}", "--no-progress", *extra]
            for flag, value in (("--data-dir", args.data_dir), ("--epochs", args.epochs)):
                if value is not None:
                    rest += [flag, str(value)]
            rest += shlex.split(args.train_args)
            cmd = [sys.executable, *launch, str(ROOT / "train.py"), *rest]
            env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}
            if args.device == "cpu":
                env["ACCELERATE_USE_CPU"] = "1"
            (code, wall), = run_all({f"v{i}": cmd}, env, out, sequential=True).values()
            if code != 0:
                raise SystemExit(f"{shlex.join(cmd)} failed:\n{(out / f'v{i}.log').read_text()}")
            summary = json.loads((out / f"v{i}" / "summary.json").read_text())
            runs[name] = {"command": shlex.join(["python", *launch, "train.py", *rest]),  # portable, as in the docs
                          "processes": procs, "threads": threads, "train_s": summary["total_time_s"], "wall_s": wall,
                          "test_acc": summary["final_test_acc"], "pipeline": summary.get("pipeline")}
    pipelined = runs["pipelined 2 processes x 1 thread"]
    rows = [{"run": name, "train_s": r["train_s"], "speedup of pipelined": r["train_s"] / pipelined["train_s"],
             "final_test_acc": r["test_acc"]} for name, r in runs.items()]
    per_process = [{"process": f["rank"], "group": f["group"], "blocks": ",".join(map(str, f["blocks"])),
                    "busy": f["busy_fraction"], "peak_MiB": f["peak_bytes"] / 2**20,
                    "block_MiB": f["block_bytes"] / 2**20} for f in pipelined["pipeline"]]
    return {"runs": runs, "rows": rows, "per_process": per_process}


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args)
    command = shlex.join(["python", "scripts/bench.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "config": _relative(args.config), "machine": machine_info(device),
              "batch_size": cfg.batch_size, "device": str(device), "mixed_precision": cfg.mixed_precision,
              "channels_last": cfg.channels_last}
    print(f"`{command}`\n")
    if args.pipeline_compare:
        result = pipeline_compare(args, cfg)
        report["pipeline_compare"] = result
        table = markdown(result["rows"]) + "\n\n" + markdown(result["per_process"])
    elif args.cache_compare:
        result = cache_compare(args)
        report["cache_compare"] = result
        table = markdown(result["rows"])
        how = "at once" if result["concurrent"] else "one after the other"
        table += f"\n\ntrain.py runs: {how}, OMP_NUM_THREADS={result['threads_per_run'] or 'unset'} each"
    elif args.input_compare:
        result = input_compare(cfg, args, device)
        report["input_compare"] = result
        sh = result["share"]
        table = markdown(result["rows"]) + (
            f"\n\n{result['images']} images {'x'.join(map(str, result['image_shape']))}, batch {cfg.batch_size}; "
            f"stage-1 step {sh['stage1_step_ms']:.1f} ms, device input {sh['device_input_ms_per_batch']:.2f} ms a "
            f"batch (per-image path {sh['per_image_input_ms_per_batch']:.2f} ms): input share of the step "
            f"{100 * sh['input_share']:.2f} %")
    elif args.imagenet_decode:
        result = imagenet_decode(args)
        report["imagenet_decode"] = result
        table = markdown(result["rows"]) + f"\n\n{result['images']} JPEGs 500x375, {result['mean_jpeg_kB']:.0f} kB each"
    elif args.precision_compare:
        results = {}
        for label, (precision, channels_last) in PRECISIONS.items():
            variant = replace(cfg, mixed_precision=precision, channels_last=channels_last)
            AcceleratorState._reset_state(reset_partial_state=True)  # one process-wide state per precision
            results[label] = bench_steps(variant, args, device)
        report["precision_compare"] = results
        report["rows"] = precision_rows(results, cfg.batch_size)
        table = markdown(report["rows"])
    else:
        report["loader"] = loader_throughput(cfg, args.loader_batches)
        result = bench_steps(cfg, args, device)
        report["steps"] = result
        rows = stage_rows(result, cfg.batch_size)
        report["rows"] = rows
        table = markdown(rows)
        loader = report["loader"]
        table += (f"\n\ndata loader: {loader['images_per_s']:.0f} images/s ({loader['source']}, "
                  f"num_workers {loader['num_workers']}, {loader['images']} images)")
    report["machine"]["load_average_end"] = list(os.getloadavg())
    m = report["machine"]
    print(table)
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
          f"GPU {m['gpu'] or 'none'}; device {device}, batch {cfg.batch_size}, mixed precision "
          f"{cfg.mixed_precision}, channels_last {cfg.channels_last}; load average {m['load_average'][0]:.2f} "
          f"-> {m['load_average_end'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
