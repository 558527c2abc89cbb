"""The input benches: crop + flip images/s, per-image DataLoader vs the device path (and the input's share of a
stage-1 step); ImageNet JPEG decode + augment images/s per loader worker."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from greedy.builder import GreedyBuilder
from greedy.datasets import (
    DataBundle,
    Normalization,
    TensorImageDataset,
    create_loaders,
    crop_flip_transform,
    dataset_info,
)
from greedy.models import create_greedy_net
from greedy.optim import make_optimizer
from greedy.profiling import interleaved_times, median, paired_ratio
from greedy.schema import Config
from greedy.trainer import train_step
from scripts.benchmarks.common import markdown


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


def run_crop_flip(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the crop + flip input bench."""
    result = input_compare(cfg, args, device)
    sh = result["share"]
    table = markdown(result["rows"]) + (
        f"\n\n{result['images']} images {'x'.join(map(str, result['image_shape']))}, batch {cfg.batch_size}; "
        f"stage-1 step {sh['stage1_step_ms']:.1f} ms, device input {sh['device_input_ms_per_batch']:.2f} ms a "
        f"batch (per-image path {sh['per_image_input_ms_per_batch']:.2f} ms): input share of the step "
        f"{100 * sh['input_share']:.2f} %")
    return {"input_compare": result}, table


def run_imagenet_decode(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the ImageNet decode bench."""
    result = imagenet_decode(args)
    table = markdown(result["rows"]) + f"\n\n{result['images']} JPEGs 500x375, {result['mean_jpeg_kB']:.0f} kB each"
    return {"imagenet_decode": result}, table
