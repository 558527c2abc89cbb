"""Evaluate a trained run: per-stage and ensemble test accuracy (and, with --analysis, the layer probes).

    python evaluate.py runs/NAME
    python evaluate.py runs/NAME --data-dir /elsewhere
"""

from __future__ import annotations

from greedy.checkpoint import RunDir, load_into, load_safetensors
from greedy.config import build_config, make_parser
from greedy.data import create_datasets, create_loaders
from greedy.errors import UsageError, run_cli
from greedy.models import create_greedy_net
from greedy.summary import format_table, result_rows
from greedy.trainer import evaluate_heads, make_accelerator


def get_args_parser():
    parser = make_parser("evaluate.py", "Evaluate a run directory made by train.py.")
    parser.add_argument("run_dir", help="runs/NAME")
    parser.add_argument("--data-dir", help="where the data set lives now, if not where it was during training")
    parser.add_argument("--batch-size", type=int, default=256)
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
    data = create_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment="none", download=cfg.download)
    net = create_greedy_net(cfg, num_classes=data.num_classes, in_chans=data.in_chans)
    load_into(net, load_safetensors(weights), weights)
    return cfg, data, net


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run = RunDir.open(args.run_dir)
    cfg, data, net = load_trained(run, args.data_dir)
    accelerator = make_accelerator(cfg)
    net.to(accelerator.device)
    _, test_loader = create_loaders(data, args.batch_size)
    heads = evaluate_heads(net, accelerator.prepare(test_loader), accelerator)
    seconds = run.stage_seconds()
    rows = result_rows(net, cfg.mode, heads, seconds)
    accelerator.print(format_table(rows))
    recorded = run.read_summary().get("final_test_acc")
    accelerator.print(f"final test accuracy: {rows[-1]['test_acc']:.4f}"
                      + (f" (training recorded {recorded:.4f})" if recorded is not None else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
