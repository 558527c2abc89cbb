"""`evaluate.py --analysis`: its flags, the probes on one run (or two), analysis.json, the PNGs and W&B.

Writes only RUN_DIR/analysis.json and RUN_DIR/analysis/*.png (and, with --wandb, a new W&B run under
RUN_DIR/wandb/); wandb is imported only when asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from greedy.analysis.context import AnalysisSettings, check_settings
from greedy.analysis.plots import make_plots
from greedy.analysis.runner import AT_INIT, FAMILIES, PAIRWISE, compare_cka, run_analysis
from greedy.analysis.trajectory_plots import plot_trajectories
from greedy.checkpoint import RunDir
from greedy.datasets import DataBundle
from greedy.errors import UsageError
from greedy.files import write_bytes
from greedy.models import GreedyNet, create_greedy_net
from greedy.schema import Config, head_takes

ANALYSIS_FILE = "analysis.json"
PLOT_DIR = "analysis"
FORMAT = 1
DEFAULTS = AnalysisSettings()
PACKAGES = ("greedy", "torch", "numpy", "scipy", "scikit-learn", "matplotlib")


@dataclass
class LoadedRun:
    """A trained run as evaluate.py loads it."""

    run: RunDir
    cfg: Config
    data: DataBundle
    net: GreedyNet

    @property
    def label(self) -> str:
        k = f", k={self.cfg.k}" if head_takes(self.cfg, "k") else ""  # k only where an auxiliary net reads it
        return f"{self.run.path.name} ({self.cfg.mode}{k})"


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """The --analysis flags of evaluate.py."""
    g = parser.add_argument_group("layer analysis (writes RUN_DIR/analysis.json and RUN_DIR/analysis/*.png)")
    g.add_argument("--analysis", metavar="NAMES",
                   help=f"comma-separated probe families or 'all': {', '.join(FAMILIES)}")
    g.add_argument("--compare", metavar="RUN_B", help="a second run (e.g. e2e) analysed alongside and drawn on the "
                                                      "same plots, the probes recorded during training included "
                                                      "(no --analysis needed for those); its directory is not written "
                                                      "to")
    g.add_argument("--wandb", action="store_true", help="also log the analysis as a new W&B run (job_type analysis)")
    g.add_argument("--analysis-samples", type=int, default=DEFAULTS.samples, metavar="N",
                   help="seeded test subset, and a same-size train subset (default: %(default)s)")
    g.add_argument("--analysis-pool", type=int, default=DEFAULTS.pool, metavar="P",
                   help="average-pool layer outputs to P x P, 0 keeps the full map (default: %(default)s)")
    g.add_argument("--analysis-heads", action="store_true", help="also probe the hidden layers of every head")
    g.add_argument("--analysis-seed", type=int, default=DEFAULTS.seed, metavar="S", help="default: %(default)s")
    g.add_argument("--analysis-threads", type=int, default=DEFAULTS.threads, metavar="N",
                   help="CPU threads while probing (default: %(default)s; the probes are many small problems)")
    g.add_argument("--knn-k", type=int, default=DEFAULTS.knn_k, metavar="K", help="default: %(default)s")
    g.add_argument("--beta", type=float, default=DEFAULTS.beta,
                   help="information: noise std at every block output (default: %(default)s)")
    g.add_argument("--info-dim", type=int, default=DEFAULTS.info_dim, metavar="D",
                   help="information, binned_entropy: PCA readout dimension (default: %(default)s)")
    g.add_argument("--mc-samples", type=int, default=DEFAULTS.mc_samples, metavar="M",
                   help="information: Monte-Carlo draws (default: %(default)s)")
    g.add_argument("--segments", type=int, default=DEFAULTS.segments, metavar="N",
                   help="regions: segments between test inputs (default: %(default)s)")
    g.add_argument("--sigmas", type=_float_list, default=DEFAULTS.sigmas, metavar="S1,S2,..",
                   help=f"noise: input noise stds (default: {','.join(map(str, DEFAULTS.sigmas))})")
    g.add_argument("--noise-samples", type=int, default=DEFAULTS.noise_samples, metavar="N",
                   help="noise: draws per input and sigma (default: %(default)s)")
    g.add_argument("--noise-heads", action="store_true", help="noise: every trained head, not only the final model")
    g.add_argument("--aniso-rank", type=int, default=DEFAULTS.aniso_rank, metavar="R",
                   help="anisotropy: top Hessian eigenpairs (default: %(default)s)")
    g.add_argument("--aniso-samples", type=int, default=DEFAULTS.aniso_samples, metavar="N",
                   help="anisotropy: train inputs for the Hessian and the per-sample gradients (default: %(default)s)")
    g.add_argument("--aniso-probes", type=int, default=DEFAULTS.aniso_probes, metavar="M",
                   help="anisotropy: Hutchinson probes for Tr(H) (default: %(default)s)")
    g.add_argument("--path-points", type=int, default=DEFAULTS.path_points, metavar="N",
                   help="connectivity: points from run A to the --compare run, ends included (default: %(default)s)")


def _float_list(text: str) -> tuple[float, ...]:
    """Parse '0.1,0.5,1' (argparse type)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def parse_names(text: str) -> list[str]:
    """Probe families from 'all' or 'a,b,c' (in the canonical order); unknown names are a UsageError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n != "all" and n not in FAMILIES]
    if unknown or not names:
        raise UsageError(f"unknown analysis {', '.join(map(repr, unknown)) or repr(text)}; "
                         f"choose from {', '.join(FAMILIES)} or all")
    return list(FAMILIES) if "all" in names else [n for n in FAMILIES if n in names]


def settings_from_args(args: argparse.Namespace) -> AnalysisSettings:
    """AnalysisSettings from the flags, each checked (one-line UsageError)."""
    flags = {"samples": "analysis-samples", "pool": "analysis-pool", "threads": "analysis-threads"}
    return check_settings(dataclasses.replace(
        DEFAULTS, samples=args.analysis_samples, pool=args.analysis_pool, heads=args.analysis_heads,
        seed=args.analysis_seed, knn_k=args.knn_k, beta=args.beta, info_dim=args.info_dim,
        mc_samples=args.mc_samples, segments=args.segments, sigmas=tuple(args.sigmas),
        noise_samples=args.noise_samples, noise_heads=args.noise_heads, threads=args.analysis_threads,
        aniso_rank=args.aniso_rank, aniso_samples=args.aniso_samples, aniso_probes=args.aniso_probes,
        path_points=args.path_points,
    ), lambda field: "--" + flags.get(field, field.replace("_", "-")))


def check_flags(args: argparse.Namespace) -> list[str] | None:
    """The requested families (None without --analysis); flags that need --analysis are rejected without it."""
    if args.analysis is None:
        if args.wandb:
            raise UsageError("--wandb only applies to the layer analysis; add --analysis NAMES|all")
        if args.compare and not any(RunDir(p).read_metrics("probe") for p in (args.run_dir, args.compare)):
            raise UsageError(f"--compare {args.compare} without --analysis draws the probes recorded during training "
                             "and neither run has any (train with --probe-every N); add --analysis NAMES|all")
        return None
    names = parse_names(args.analysis)
    alone = [n for n in PAIRWISE if n in names and "all" not in [a.strip() for a in args.analysis.split(",")]]
    if alone and not args.compare:
        raise UsageError(f"--analysis {alone[0]} needs two runs of one architecture; add --compare RUN_B")
    return names


# ---------------------------------------------------------------------------------------------------------------
# running


def initial_net(cfg: Config, data: DataBundle) -> GreedyNet:
    """The net the run started from, rebuilt as train.py builds it: `set_seed(cfg.seed)`, then
    `create_greedy_net` (the data loading in between draws no random numbers). The global random states of python,
    numpy and torch (CPU) are restored afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            set_seed(cfg.seed)
            return create_greedy_net(cfg, num_classes=data.num_classes, in_chans=data.in_chans,
                                     img_size=data.img_size)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def trained_heads(cfg: Config, net: GreedyNet) -> list[int]:
    """1-based heads that training fitted: all of them greedily, only the last end to end."""
    return [net.num_stages] if cfg.mode == "e2e" else list(range(1, net.num_stages + 1))


def check_comparable(a: LoadedRun, b: LoadedRun) -> None:
    """Two runs can share plots and CKA only if they see the same inputs."""
    keys = ("dataset", "img_size", "num_classes")
    diff = [k for k in keys if getattr(a.cfg, k) != getattr(b.cfg, k)]
    if diff or len(a.data.test) != len(b.data.test) or a.data.num_classes != b.data.num_classes:
        what = ", ".join(f"{k} {getattr(a.cfg, k)} vs {getattr(b.cfg, k)}" for k in diff) or "test set sizes differ"
        raise UsageError(f"--compare {b.run.path}: runs see different data ({what}); compare runs on one dataset")


def architecture_difference(a: GreedyNet, b: GreedyNet) -> str | None:
    """The first weight in which two nets differ ("blocks.0.conv.weight (only in A)", "... ((8, 1, 3, 3) vs
    (16, 1, 3, 3))"), or None when their weights have the same names and shapes (the pairwise families need it)."""
    sa, sb = a.state_dict(), b.state_dict()
    only = sorted(set(sa) ^ set(sb))
    diff = ([f"{k} (only in {'A' if k in sa else 'B'})" for k in only]
            or [f"{k} ({tuple(sa[k].shape)} vs {tuple(sb[k].shape)})" for k in sa if sa[k].shape != sb[k].shape])
    return diff[0] if diff else None


def check_same_architecture(a: LoadedRun, b: LoadedRun) -> None:
    """Two runs can be interpolated only if their weights have the same names and shapes."""
    diff = architecture_difference(a.net, b.net)
    if diff:
        raise UsageError(f"--compare {b.run.path}: connectivity interpolates weights of one architecture, but the "
                         f"runs differ at {diff}; compare two seeds, or greedy and e2e, of one config")


def run_info(loaded: LoadedRun, role: str) -> dict[str, Any]:
    """What identifies a run in analysis.json."""
    cfg, summary = loaded.cfg, loaded.run.read_summary()
    return {"role": role, "label": loaded.label, "path": str(loaded.run.path), "name": loaded.run.path.name,
            "mode": cfg.mode, "k": cfg.k, "dataset": cfg.dataset, "widths": list(cfg.widths), "seed": cfg.seed,
            "experiment": cfg.experiment, "trained_heads": trained_heads(cfg, loaded.net),
            "final_test_acc": summary.get("final_test_acc")}


def versions() -> dict[str, str]:
    """Versions of python and of the packages the numbers depend on."""
    found = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "unknown"
    return found


def analyse(target: LoadedRun, names: list[str], settings: AnalysisSettings, other: LoadedRun | None = None,
            command: str = "", say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the families on the target run (and the other one), returning the analysis.json content."""
    t_start = time.perf_counter()
    loaded = [target] + ([other] if other is not None else [])
    if other is not None:
        check_comparable(target, other)
        if any(n in PAIRWISE for n in names):
            check_same_architecture(target, other)
    runs, seconds = [], {}
    for role, item in zip("AB", loaded, strict=False):
        timings: dict[str, float] = {}
        init = None
        if any(n in AT_INIT for n in names):
            init = initial_net(item.cfg, item.data).to(next(item.net.parameters()).device)
        pair = {"other": other.net, "other_heads": trained_heads(other.cfg, other.net)} if role == "A" and other else {}
        own = names if role == "A" else [n for n in names if n not in PAIRWISE]  # a pair's path is run A's
        results = run_analysis(item.net, target.data, own, settings, trained_heads(item.cfg, item.net), timings,
                               init_net=init, **pair)
        runs.append({**run_info(item, role), "results": results})
        seconds[role] = timings
    analysis: dict[str, Any] = {
        "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "versions": versions(), "settings": _plain(dataclasses.asdict(settings)), "families": names, "runs": runs,
    }
    if other is not None and "cka" in names:
        analysis["compare"] = {"cka": compare_cka(target.net, other.net, target.data, settings)}
    seconds["total"] = time.perf_counter() - t_start
    analysis["seconds"] = seconds
    return json_safe(analysis)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def json_safe(obj: Any) -> Any:
    """Recursively turn numpy/torch scalars and arrays into Python values, non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return obj


def write_outputs(run: RunDir, analysis: dict[str, Any]) -> tuple[Path, list[Path]]:
    """Write analysis.json (atomically) and the PNGs into the run directory; nothing else is touched."""
    path = run.path / ANALYSIS_FILE
    write_bytes(path, json.dumps(analysis, indent=1, allow_nan=False) + "\n")
    return path, make_plots(analysis, run.path / PLOT_DIR)


def probe_trajectories(run: RunDir, other: RunDir | None = None) -> list[Path]:
    """Draw the probes recorded during training (metrics.jsonl records of kind "probe") of `run`, and of `other`
    on the same figures, into RUN_DIR/analysis/during_*.png; nothing is written when neither has any."""
    runs = [(f"{r.path.name} ({r.load_config().mode})", r.read_metrics("probe")) for r in (run, other) if r]
    if not any(records for _, records in runs):
        return []
    return plot_trajectories(runs, run.path / PLOT_DIR)


def summary_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per probed layer of a run: the headline number of each family that has one (None: not probed)."""
    res = run["results"]
    columns = {"linear": ("test_acc", "linear"), "knn": ("test_acc", "knn"), "clustering": ("nc1", "nc1"),
               "information": ("mi_nats", "I(X;T)"), "binned_entropy": ("h_bin", "H(Bin)"),
               "regions": ("regions_per_length_per_neuron", "reg/len/unit"), "moments": ("chi", "chi"),
               "chaos": ("c", "corr")}
    present = {fam: spec for fam, spec in columns.items() if fam in res}
    rows: dict[str, dict[str, Any]] = {}
    for fam, (key, col) in present.items():
        for e in res[fam]["layers"]:
            row = rows.setdefault(e["layer"], {"layer": e["layer"], **{c: None for _, c in present.values()}})
            row[col] = e.get(key)
    order = [la["name"] for la in res.get("layers", [])] + [n for n in rows if n.startswith("block")]
    return [rows[n] for n in dict.fromkeys(order) if n in rows]


def headline_lines(run: dict[str, Any], other_label: str = "B") -> list[str]:
    """One line per anisotropy view and connectivity path of a run (what the per-layer table cannot hold)."""
    def f(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)  # None: non-finite in analysis.json

    res, lines = run["results"], []
    for e in res.get("anisotropy", {}).get("layers", []):
        lines.append(f"anisotropy {e['layer']}: Tr(H Sigma) {f(e['tr_h_sigma'], '.4g')} (top {e['rank']}, "
                     f"{f(e['top_fraction'], '.0%')} of Tr(H)) vs isotropic {f(e['tr_h_sigma_iso'], '.4g')}: ratio "
                     f"{f(e['ratio'], '.4g')}  (D={e['dim']}, n={e['n']})")
    conn = res.get("connectivity", {})
    if conn.get("skipped"):
        lines.append(f"connectivity: skipped ({conn['notes']})")
    for p in conn.get("paths", []):
        loss = p["train_loss"]
        top = max((v for v in loss if v is not None), default=None)
        lines.append(f"connectivity {p['model']} -> {other_label}: train-loss barrier "
                     f"{f(p['train_loss_barrier'], '.4f')} at alpha {f(p['train_loss_barrier_alpha'], '.2f')}, "
                     f"test-error barrier {f(p['test_error_barrier'], '.4f')}; loss {f(loss[0], '.4f')} -> "
                     f"{f(top, '.4f')} (max) -> {f(loss[-1], '.4f')}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# W&B


def log_wandb(target: LoadedRun, analysis: dict[str, Any], pngs: list[Path], say: Callable[[str], None] = print
              ) -> None:
    """Log the analysis as a new W&B run in the run's project and group (W&B's mode as the environment sets it:
    evaluate.py sets WANDB_MODE=offline without credentials)."""
    import wandb

    config = {"settings": analysis["settings"], "families": analysis["families"], "versions": analysis["versions"],
              "runs": [{k: v for k, v in r.items() if k != "results"} for r in analysis["runs"]]}
    wrun = wandb.init(project=target.cfg.wandb_project, group=target.cfg.experiment, job_type="analysis",
                      dir=str(target.run.path / "analysis"), name=f"{target.run.path.name}-analysis",
                      config=config)
    payload: dict[str, Any] = {}
    for run in analysis["runs"]:
        for fam, result in run["results"].items():
            payload.update(_family_tables(wandb, wrun, f"{run['role']}/{fam}", result))
    if "compare" in analysis:
        cka = analysis["compare"]["cka"]
        payload["compare/cka"] = wandb.Table(columns=["layer_a", *cka["names_b"]],
                                             data=[[a, *row] for a, row in zip(cka["names_a"], cka["matrix"],
                                                                                strict=True)])
    payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in pngs})
    wrun.log(payload)  # one step: the analysis is a snapshot
    wrun.summary["analysis_json"] = str(target.run.path / ANALYSIS_FILE)
    if os.environ.get("WANDB_MODE") == "offline":
        say(f"W&B analysis run saved offline in {Path(wrun.dir).parent}; upload it with `wandb sync "
            f"{Path(wrun.dir).parent}`")
    wrun.finish()


def _family_tables(wandb: Any, wrun: Any, prefix: str, result: Any) -> dict[str, Any]:
    """A per-layer family as a W&B table (its numbers also into the summary); noise as a table over sigma."""
    if not isinstance(result, dict):
        return {}
    if result.get("layers") and isinstance(result["layers"][0], dict):
        cols = list(dict.fromkeys(k for e in result["layers"] for k, v in e.items() if _scalar(v)))
        wrun.summary.update({f"{prefix}/{e['layer']}/{k}": v for e in result["layers"] for k, v in e.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "depth"})
        return {prefix: wandb.Table(columns=cols, data=[[e.get(c) for c in cols] for e in result["layers"]])}
    if "paths" in result:
        wrun.summary.update({f"{prefix}/{p['model']}/{k}": v for p in result["paths"] for k, v in p.items()
                             if k.endswith(("_barrier", "_barrier_alpha"))})
        rows = [[p["model"], a, loss, acc] for p in result["paths"]
                for a, loss, acc in zip(result["alphas"], p["train_loss"], p["test_acc"], strict=True)]
        return {prefix: wandb.Table(columns=["model", "alpha", "train_loss", "test_acc"], data=rows)}
    if "models" in result:
        rows = [[m["model"], s, err, d] for m in result["models"]
                for s, err, d in zip(result["sigmas"], m["mean_error"], m["distance_from_mean_error"], strict=True)]
        return {prefix: wandb.Table(columns=["model", "sigma", "mean_error", "distance_from_mean_error"], data=rows)}
    return {}


def _scalar(v: Any) -> bool:
    """A value that fits a table cell."""
    return v is None or isinstance(v, (int, float, str, bool))
