"""Train a CNN greedily, block by block, on auxiliary problems (or end to end as a baseline).

    python train.py -c configs/digits_k2.yaml [--key value ...]
    python train.py -c configs/digits_k2.yaml --mode e2e
    python train.py -c configs/digits_k2.yaml --mode decoupled
    python train.py --resume runs/NAME
    accelerate launch --multi_gpu --num_processes 8 train.py -c configs/imagenet_k3.yaml
    accelerate launch --multi_gpu --num_processes 4 train.py -c configs/cifar10_k3.yaml --mode decoupled --pipeline 4
"""

from __future__ import annotations

from pathlib import Path

from greedy.builder import GreedyBuilder
from greedy.checkpoint import RunDir
from greedy.config import build_config, config_arguments, load_yaml, make_parser, overrides_from_args
from greedy.datasets import dataset_info
from greedy.errors import UsageError, run_cli, warn
from greedy.schema import RESUME_MUTABLE, Config, shared_values
from greedy.session import check_model_shapes, run_training
from greedy.summary import describe_model, format_table


def get_args_parser():
    parser = make_parser("train.py", "Greedy layerwise (or end-to-end) training of a CNN.")
    parser.add_argument("-c", "--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last complete epoch")
    parser.add_argument("--print-model", action="store_true", help="print the stages and shapes, then exit")
    config_arguments(parser)
    return parser


def resolve_config(args) -> tuple[Config, RunDir | None]:
    """The config of a new run (file + overrides), or the saved one of a resumed run; raises UsageError."""
    overrides = overrides_from_args(args)
    check_data = not args.print_model  # printing a model needs no data
    if args.resume:
        if args.config:
            raise UsageError(f"--resume {args.resume} continues the run with its saved config; drop -c "
                             f"{args.config} (or start a new run with -c and without --resume)")
        run = RunDir.open(args.resume)
        cfg = run.load_config()
        saved = cfg.to_dict()
        clash = {k: v for k, v in overrides.items() if k not in RESUME_MUTABLE and saved[k] != v}
        if clash:
            key, value = next(iter(clash.items()))
            raise UsageError(f"--resume {run.path}: --{key.replace('_', '-')} {value} contradicts the saved config "
                             f"({key}: {saved[key]}); drop the override or start a new run")
        return build_config({**saved, **overrides}, check_data), run
    if not args.config:
        raise UsageError("no config given; pass -c configs/<name>.yaml (or --resume RUN_DIR)")
    values, warnings = shared_values(load_yaml(args.config), overrides, args.config)
    for line in warnings:  # a key of the file this run does not read (another mode's, another head's): harmless
        warn(line)
    return build_config(values, check_data), None


def print_model(cfg: Config) -> None:
    info = dataset_info(cfg.dataset)
    img_size = cfg.img_size or info.img_size
    net = check_model_shapes(cfg)
    print(f"{cfg.dataset}: input {info.in_chans}x{img_size}x{img_size}, {cfg.arch}, {cfg.mode}, "
          f"{net.num_stages} local modules, aux {cfg.aux}{f' (k={cfg.k})' if cfg.aux == 'cnn' else ''}, "
          f"final head {cfg.final_head}, objective {cfg.objective}")
    objectives = GreedyBuilder.for_config(cfg, net, (info.in_chans, img_size, img_size)).objectives
    print(format_table(describe_model(net, info.in_chans, img_size, objectives)))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg, run = resolve_config(args)
    if args.print_model:
        print_model(cfg)
        return 0
    if run is not None and run.finished:  # nothing to do, and nothing of the finished run may change
        print(f"run {run.path} is finished (summary.json, model.safetensors); nothing to do. Evaluate it with "
              f"`python evaluate.py {run.path}`")
        return 0
    run_training(cfg, run, Path(args.config).stem if args.config else run.path.name)
    return 0


if __name__ == "__main__":
    run_cli(main)
