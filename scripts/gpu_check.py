"""A prepared GPU check: the CIFAR-10 k=3 paper net trained on device-resident data, projected to the paper's schedule.

    python scripts/gpu_check.py --json gpu_check.json            # one GPU, about 2-4 minutes
    python scripts/gpu_check.py --compile --json gpu_check.json  # also torch.compile'd blocks (slower to start)
    python scripts/gpu_check.py --device cpu --steps 1 --warmup 0 --batch-size 8 --images 256   # smoke test

Random CIFAR-shaped data (50,000 images by default, normalized float32) is held on the device and served by the
training input path (`DeviceLoader`: seeded permutation, per-sample crop + flip by one gather on the device). For each
precision (fp32; bf16 + channels_last; with --compile also bf16 + channels_last + torch.compile) and each greedy
stage of configs/cifar10_k3.yaml, it runs `greedy.trainer.train_step` (the training loop's step: frozen prefix
under no_grad, block + auxiliary head forward, backward, SGD) for `--warmup` then `--steps` timed steps, and
the stage's evaluation forward on test batches. It prints per stage: training images/s, evaluation images/s,
peak device memory, the time of one epoch (50,000 training + 10,000 test images) and of the stage's 50 epochs;
and the projected wall time of the full paper schedule (4 stages x 50 epochs), which the compass goal wants at
most 10 minutes. The data pipeline's images/s alone is measured first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greedy.builder import GreedyBuilder, Stage  # noqa: E402
from greedy.config import build_config, load_yaml  # noqa: E402
from greedy.datasets import DataBundle, Normalization, TensorImageDataset, create_loaders  # noqa: E402
from greedy.errors import UsageError, run_cli  # noqa: E402
from greedy.models import create_greedy_net  # noqa: E402
from greedy.optim import make_optimizer  # noqa: E402
from greedy.schema import Config  # noqa: E402
from greedy.trainer import as_input, stage_logits, train_step  # noqa: E402

PAPER_TRAIN, PAPER_TEST = 50_000, 10_000  # CIFAR-10 images per epoch
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
MiB = 2**20


def get_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default=str(ROOT / "configs/cifar10_k3.yaml"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per stage and precision")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--eval-batches", type=int, default=10, help="timed evaluation batches per stage")
    p.add_argument("--batch-size", type=int, help="default: the config's (128)")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--images", type=int, default=PAPER_TRAIN, help="random training images held on the device")
    p.add_argument("--compile", action="store_true", help="also bf16 + channels_last + torch.compile")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    for key in ("steps", "eval_batches", "images", "eval_batch_size"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here; pass --device cpu for the smoke test")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_data(cfg: Config, n: int, device: torch.device) -> tuple:
    """(train, test) DeviceLoaders over random CIFAR-shaped images, normalized as CIFAR-10 and held on `device`
    (generated there: no copy in RAM), the training set augmented as the paper's."""
    gen = torch.Generator(device=device).manual_seed(0)
    norm = Normalization(255.0, *CIFAR10_STATS)

    def split(size: int, padding: int) -> TensorImageDataset:
        pixels = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)
        targets = torch.randint(0, 10, (size,), generator=gen, device=device)
        return TensorImageDataset(norm(pixels), targets, crop_padding=padding)

    bundle = DataBundle(split(n, 4), split(min(n, PAPER_TEST), 0), 10, 3, 32)
    return create_loaders(bundle, cfg.batch_size, eval_batch_size=cfg.eval_batch_size, device=device,
                          seed=cfg.seed)


def batches(loader):
    """The loader's batches forever, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def pipeline_rate(loader, device: torch.device, count: int) -> float:
    """Images/s of the device input path alone (permutation, batch gather, per-sample crop + flip)."""
    it = batches(loader)
    next(it)
    sync(device)
    t0, seen = time.perf_counter(), 0
    for _ in range(count):
        seen += len(next(it)[1])
    sync(device)
    return seen / (time.perf_counter() - t0)


def images_per_s(batch: Callable[[], int], warmup: int, steps: int, device: torch.device) -> float:
    """Images/s of `batch()` (which returns the images it processed) over `steps` calls after `warmup` untimed."""
    for _ in range(warmup):
        batch()
    sync(device)
    t0 = time.perf_counter()
    seen = sum(batch() for _ in range(steps))
    sync(device)
    return seen / (time.perf_counter() - t0)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MiB if device.type == "cuda" else None


def check_stage(stage: Stage, cfg: Config, args: argparse.Namespace, accelerator: Accelerator, data: Iterator,
                held: Iterator) -> dict:
    """One greedy stage: training images/s (`train_step`), evaluation images/s, peak memory, projected epochs."""
    device = accelerator.device
    part = torch.compile(stage.trainable) if cfg.compile else stage.trainable
    model, optimizer = accelerator.prepare(part, make_optimizer(cfg, part))

    def train_batch() -> int:
        x, y = next(data)
        train_step(stage.prefix, model, optimizer, accelerator, as_input(x, cfg.channels_last), y)
        return len(y)

    @torch.no_grad()
    def eval_batch() -> int:
        x, y = next(held)
        with accelerator.autocast():
            stage_logits(stage, [model], as_input(x, cfg.channels_last))[0].argmax(1)
        return len(y)

    model.train()
    peak_reset(device)
    train_rate = images_per_s(train_batch, args.warmup, args.steps, device)
    model.eval()
    eval_rate = images_per_s(eval_batch, 1, args.eval_batches, device)
    epoch_s = PAPER_TRAIN / train_rate + PAPER_TEST / eval_rate
    accelerator.free_memory()
    stage.trainable.eval()
    return {"stage": stage.index + 1, "train img/s": train_rate, "eval img/s": eval_rate, "peak MiB": peak_mib(device),
            "epoch s": epoch_s, f"{cfg.epochs} epochs min": cfg.epochs * epoch_s / 60}


def check_precision(cfg: Config, args: argparse.Namespace, device: torch.device, train, test) -> list[dict]:
    """Every greedy stage of the config's net in one precision: training and evaluation images/s, peak memory."""
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    net = create_greedy_net(cfg, num_classes=10, in_chans=3).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    builder = GreedyBuilder(net)
    data, held = batches(train), batches(test)
    return [check_stage(builder.stage(j), cfg, args, accelerator, data, held) for j in range(builder.num_stages)]


def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = {**load_yaml(args.config), "eval_batch_size": args.eval_batch_size}
    if args.batch_size:
        base["batch_size"] = args.batch_size
    variants = {"fp32": {}, "bf16+channels_last": {"mixed_precision": "bf16", "channels_last": True}}
    if args.compile:
        variants["bf16+channels_last+compile"] = {"mixed_precision": "bf16", "channels_last": True, "compile": True}
    command = shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"`{command}`\n")
    cfg = build_config(base, check_data=False)
    train, test = resident_data(cfg, args.images, device)
    pipeline = pipeline_rate(train, device, max(args.steps, 5))
    print(f"data pipeline alone (device-resident float32, per-sample crop + flip, batch {cfg.batch_size}): "
          f"{pipeline:,.0f} images/s\n")
    report = {"command": command, "device": str(device), "pipeline_images_per_s": pipeline, "variants": {},
              "machine": {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                          "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version()}}
    for label, overrides in variants.items():
        cfg = build_config({**base, **overrides}, check_data=False)
        rows = check_precision(cfg, args, device, train, test)
        total = sum(r[f"{cfg.epochs} epochs min"] for r in rows)
        report["variants"][label] = {"rows": rows, "projected_schedule_min": total}
        print(f"{label}: {len(rows)} stages x {cfg.epochs} epochs of {PAPER_TRAIN:,} + {PAPER_TEST:,} images")
        print(markdown(rows))
        print(f"projected full paper schedule: {total:.1f} min ({'within' if total <= 10 else 'over'} the "
              f"10-minute goal)\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"device {device} ({report['machine']['gpu'] or platform.processor() or 'cpu'}), torch {torch.__version__},"
          f" load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
