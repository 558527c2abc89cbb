"""Evaluate a trained run: per-stage and ensemble test accuracy (and, with --analysis, the layer probes).

    python evaluate.py runs/NAME
    python evaluate.py runs/NAME --data-dir /elsewhere
    python evaluate.py runs/NAME --analysis all [--compare runs/OTHER] [--wandb]   (docs/ANALYSIS.md)
    python evaluate.py runs/GREEDY --compare runs/E2E     (a run trained with --probe-every N: its probe trajectories)
"""

from __future__ import annotations

import sys

from greedy.analysis.report import (
    LoadedRun,
    add_analysis_arguments,
    analyse,
    check_flags,
    headline_lines,
    log_wandb,
    probe_trajectories,
    settings_from_args,
    summary_rows,
    write_outputs,
)
from greedy.checkpoint import RunDir, load_into, load_safetensors
from greedy.config import build_config, make_parser
from greedy.datasets import create_datasets, create_loaders
from greedy.errors import UsageError, run_cli
from greedy.models import create_greedy_net
from greedy.summary import format_table, result_rows
from greedy.tracking import offline_without_credentials
from greedy.trainer import evaluate_heads, make_accelerator


def get_args_parser():
    parser = make_parser("evaluate.py", "Evaluate a run directory made by train.py.")
    parser.add_argument("run_dir", help="runs/NAME")
    parser.add_argument("--data-dir", help="where the data set lives now, if not where it was during training")
    parser.add_argument("--batch-size", type=int, default=256)
    add_analysis_arguments(parser)
    return parser


def load_trained(run: RunDir, data_dir: str | None = None):
    """The run's config, data and trained net, rebuilt from the run directory alone."""
    cfg = run.load_config()
    if data_dir:
        cfg.data_dir = data_dir
    cfg = build_config(cfg.to_dict())
    weights = run.path / "model.safetensors"
    if not weights.exists():
        raise UsageError(f"{run.path} has no model.safetensors (training did not finish); "
                         f"finish it with `python train.py --resume {run.path}`")
    data = create_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment="none", download=cfg.download,
                           norm=(cfg.norm_mean, cfg.norm_std))
    net = create_greedy_net(cfg, num_classes=data.num_classes, in_chans=data.in_chans)
    load_into(net, load_safetensors(weights), weights)
    return cfg, data, net


def evaluate_run(run: RunDir, cfg, data, net, batch_size: int) -> None:
    """Print the per-stage table and the final test accuracy (against the one recorded in training)."""
    accelerator = make_accelerator(cfg)
    net.to(accelerator.device)
    _, test_loader = create_loaders(data, batch_size, with_train=False)
    heads = evaluate_heads(net, accelerator.prepare(test_loader), accelerator)
    seconds = run.stage_seconds()
    rows = result_rows(net, cfg.mode, heads, seconds)
    accelerator.print(format_table(rows))
    recorded = run.read_summary().get("final_test_acc")
    accelerator.print(f"final test accuracy: {rows[-1]['test_acc']:.4f}"
                      + (f" (training recorded {recorded:.4f})" if recorded is not None else ""))


def run_layer_analysis(args, names: list[str], target: LoadedRun, other_run: RunDir | None, argv: list[str]) -> None:
    """Probe the run's layers (and --compare's), write analysis.json and the PNGs, optionally log to W&B."""
    settings = settings_from_args(args)
    other = None
    if other_run is not None:
        other = LoadedRun(other_run, *load_trained(other_run, args.data_dir))
        other.net.to(next(target.net.parameters()).device)
    analysis = analyse(target, names, settings, other, command=" ".join(["evaluate.py", *argv]))
    path, pngs = write_outputs(target.run, analysis)
    for run in analysis["runs"]:
        print(f"\nanalysis of {run['label']}:\n{format_table(summary_rows(run))}")
        for line in headline_lines(run, analysis["runs"][-1]["label"]):
            print(line)
    print(f"\nanalysis ({', '.join(names)}) in {analysis['seconds']['total']:.1f}s: {path}, "
          f"{len(pngs)} plots in {path.parent / 'analysis'}")
    if args.wandb:
        offline_without_credentials()  # no credentials: an offline run, not a prompt
        log_wandb(target, analysis, pngs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    names = check_flags(args)  # bad --analysis names fail before anything is loaded
    run = RunDir.open(args.run_dir)
    other_run = RunDir.open(args.compare) if args.compare else None  # a bad --compare fails before any work
    if other_run is not None and names and not (other_run.path / "model.safetensors").exists():
        raise UsageError(f"--compare {other_run.path} has no model.safetensors (training did not finish); "
                         f"finish it with `python train.py --resume {other_run.path}`")
    cfg, data, net = load_trained(run, args.data_dir)
    evaluate_run(run, cfg, data, net, args.batch_size)
    if names:
        run_layer_analysis(args, names, LoadedRun(run, cfg, data, net), other_run, argv)
    pngs = probe_trajectories(run, other_run)
    if pngs:
        print(f"probes during training: {len(pngs)} plots in {pngs[0].parent} ({', '.join(p.name for p in pngs)})")
    return 0


if __name__ == "__main__":
    run_cli(main)
