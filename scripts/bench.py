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
    python scripts/bench.py -c configs/fashion_mnist_resnet_compare.yaml --num-modules 4 \
        --objective-compare                                  # each local objective's step per module, and its floor

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
import json
import os
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greedy.config import build_config, load_yaml  # noqa: E402
from greedy.errors import UsageError  # noqa: E402
from greedy.schema import Config  # noqa: E402
from scripts.benchmarks import cache, inputs, objectives, pipeline, precision, steps  # noqa: E402
from scripts.benchmarks.common import machine_info, relative  # noqa: E402

# flag -> the benchmark it runs instead of the step bench (scripts/benchmarks/, one module per benchmark)
BENCHMARKS = {
    "pipeline_compare": pipeline.run,
    "cache_compare": cache.run,
    "input_compare": inputs.run_crop_flip,
    "imagenet_decode": inputs.run_imagenet_decode,
    "precision_compare": precision.run,
    "objective_compare": objectives.run,
}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default=str(ROOT / "configs/cifar10_k3.yaml"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-modules", type=int, help="split the net into this many local modules (default: the config's)")
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
    p.add_argument("--objective-compare", action="store_true",
                   help="instead: per local objective and module, the trainer's step next to the module alone with "
                        "that objective (time, activation memory, cost over ce) and a decoupled step of the net")
    p.add_argument("--objectives", help="--objective-compare: comma list (default: every registered objective)")
    p.add_argument("--sequential", action="store_true",
                   help="--cache-compare: run off, then on (default: both at once, one thread each)")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> Config:
    values = load_yaml(args.config)
    values.update(batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                  channels_last=args.channels_last)
    if args.data_dir:
        values["data_dir"] = args.data_dir
    if args.num_modules:
        values["num_modules"] = args.num_modules
    return build_config(values, check_data=False)


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args)
    command = shlex.join(["python", "scripts/bench.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "config": relative(args.config), "machine": machine_info(device),
              "batch_size": cfg.batch_size, "device": str(device), "mixed_precision": cfg.mixed_precision,
              "channels_last": cfg.channels_last}
    print(f"`{command}`\n")
    bench = next((fn for flag, fn in BENCHMARKS.items() if getattr(args, flag)), steps.run)
    entries, table = bench(cfg, args, device)
    report.update(entries)
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
