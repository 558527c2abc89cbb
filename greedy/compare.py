"""Greedy vs end-to-end vs decoupled on one config: the run grid, epoch budgets, aggregation, tables and plots.

`scripts/compare.py` runs the grid through train.py; this module holds what it reuses: which runs there are
and with which epochs, and the mean ± std over seeds of what each run's directory holds (what a run costs is
greedy/cost.py's).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greedy.checkpoint import RunDir
from greedy.cost import Cost
from greedy.errors import UsageError
from greedy.schema import MODES, Config

BUDGETS = ("per_stage", "total")


# ---------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison."""

    mode: str
    k: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}-k{self.k}-s{self.seed}"


def run_specs(modes: list[str], ks: list[int], seeds: list[int]) -> list[RunSpec]:
    """Every (mode, k, seed), grouped by k then mode, so that a k's comparison is complete early."""
    return [RunSpec(m, k, s) for k in ks for m in modes for s in seeds]


def check_grid(modes: list[str], ks: list[int], seeds: list[int], budget: str) -> None:
    """One-line errors for a grid that cannot run."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UsageError(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    bad_k = [k for k in ks if k not in (1, 2, 3)]
    if bad_k:
        raise UsageError(f"--k: {bad_k[0]} is outside 1..3 (hidden layers of each auxiliary problem)")
    if budget not in BUDGETS:
        raise UsageError(f"--budget: {budget!r} is not one of {', '.join(BUDGETS)}")
    for name, values in (("--modes", modes), ("--k", ks), ("--seeds", seeds)):
        if not values:
            raise UsageError(f"{name}: give at least one value")
        if len(set(values)) != len(values):
            raise UsageError(f"{name}: {','.join(map(str, values))} names a value twice")


def budget_factor(cfg: Config, mode: str, budget: str) -> int:
    """How many times a greedy stage's epochs the mode trains for: 1, or (total budget) the number of blocks."""
    return cfg.num_blocks if budget == "total" and mode != "greedy" else 1


def budget_overrides(cfg: Config, mode: str, budget: str) -> dict[str, Any]:
    """The epoch keys of a mode's run under the budget rule (e2e: e2e_epochs too, which train.py reads)."""
    factor = budget_factor(cfg, mode, budget)
    values: dict[str, Any] = {}
    if factor != 1:
        values = {"epochs": cfg.epochs * factor, "decay_epochs": cfg.decay_epochs * factor}
        if cfg.warmup_epochs:
            values["warmup_epochs"] = cfg.warmup_epochs * factor
    if mode == "e2e":
        values["e2e_epochs"] = cfg.epochs * factor
    return values


def budget_rule(cfg: Config, budget: str) -> str:
    """The epoch-budget rule, in words, with this config's numbers."""
    e, d, j = cfg.epochs, cfg.decay_epochs, cfg.num_blocks
    if budget == "per_stage":
        return (f"budget per_stage: every greedy stage trains {e} epochs (LR decay every {d:g}); e2e and decoupled "
                f"train {e} epochs with the same schedule, so every block sees as many passes over the data as "
                f"one greedy stage (greedy's total is {j} x {e} = {j * e} epochs of some block).")
    return (f"budget total: every greedy stage trains {e} epochs (LR decay every {d:g}), {j} x {e} = {j * e} in "
            f"all; e2e and decoupled train {j * e} epochs with the LR decay every {j * d:g} epochs "
            f"(schedule scaled by the {j} blocks), greedy's total.")


def run_status(path: Path) -> str:
    """'done' (summary.json), 'partial' (a run directory to --resume), or 'new'."""
    if (path / "summary.json").is_file():
        return "done"
    if (path / "config.yaml").is_file():
        return "partial"
    return "new"


# ---------------------------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a finished run directory holds that the comparison uses."""

    spec: RunSpec
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    process_seconds: float | None = None


def load_result(spec: RunSpec, path: Path, process_seconds: float | None = None) -> RunResult:
    summary = json.loads((path / "summary.json").read_text())
    metrics = RunDir(path).read_metrics()  # epoch records (probe records, if any, are not training curves)
    return RunResult(spec, summary, metrics, process_seconds)


def accuracy_by_depth(result: RunResult) -> list[float]:
    """Test accuracy of each stage's head (greedy, decoupled); e2e trains only the last head."""
    accs = result.summary["stage_test_acc"]
    return accs if result.spec.mode != "e2e" else accs[-1:]


def time_curve(result: RunResult) -> list[tuple[float, float]]:
    """(training seconds so far, test accuracy of the head being trained) after every epoch.

    Greedy: each stage's `time` counts from its own start, so earlier stages' totals are added. Decoupled:
    the last block's head (the assembled net's output).
    """
    records = result.metrics
    if result.spec.mode == "decoupled":
        last = max(r["stage"] for r in records)
        records = [r for r in records if r["stage"] == last]
    curve, offset, ends = [], 0.0, {}
    for r in records:
        if r["stage"] not in ends and ends:
            offset = sum(ends.values())
        ends[r["stage"]] = r["time"]
        curve.append((offset + r["time"], r["test_acc"]))
    return curve


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class Group:
    """The runs of one (mode, k) over seeds, and their cost."""

    mode: str
    k: int
    results: list[RunResult]
    cost: Cost
    depth: list[tuple[float, float]] = field(init=False)  # mean, std of each stage's head

    def __post_init__(self) -> None:
        by_stage = zip(*(accuracy_by_depth(r) for r in self.results), strict=True)
        self.depth = [mean_std(list(accs)) for accs in by_stage]

    def values(self, get: Callable[[RunResult], float | None]) -> tuple[float, float]:
        found = [v for v in map(get, self.results) if v is not None]
        return mean_std(found)


def aggregate(groups: list[Group]) -> list[dict[str, Any]]:
    """One flat row per (mode, k): mean and std over seeds of every reported number."""
    rows = []
    for g in groups:
        final = g.values(lambda r: r.summary["final_test_acc"])
        per_block = g.mode != "e2e"
        best = max(range(len(g.depth)), key=lambda j: g.depth[j][0]) if per_block else None
        ensemble = g.values(lambda r: r.summary["ensemble_acc"][-1]) if per_block else (math.nan, math.nan)
        train_s = g.values(lambda r: r.summary["total_time_s"])
        process_s = g.values(lambda r: r.process_seconds)
        rows.append({
            "mode": g.mode, "k": g.k, "seeds": len(g.results), "epochs": g.cost.epochs,
            "final_acc_mean": final[0], "final_acc_std": final[1],
            "best_stage": best + 1 if best is not None else None,
            "best_stage_acc_mean": g.depth[best][0] if best is not None else math.nan,
            "best_stage_acc_std": g.depth[best][1] if best is not None else math.nan,
            "ensemble_acc_mean": ensemble[0], "ensemble_acc_std": ensemble[1],
            "train_s_mean": train_s[0], "train_s_std": train_s[1],
            "process_s_mean": process_s[0], "process_s_std": process_s[1],
            "train_flops": g.cost.train_flops, "cache_flops": g.cost.cache_flops, "feature_cache": g.cost.cached,
            "images_per_block": g.cost.images_per_block, "peak_activation_bytes": g.cost.peak_activation_bytes,
        })
    return rows


# ---------------------------------------------------------------------------------------------- tables


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """'91.23 ± 0.12' (accuracies in percent); '—' when missing, no ± for one seed."""
    if math.isnan(mean):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def _flops_text(flops: float) -> str:
    exponent = int(math.floor(math.log10(flops))) if flops > 0 else 0
    return f"{flops / 10**exponent:.2f}e{exponent}"


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else
                         (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table; FLOPs of cached greedy runs carry footnote ¹."""
    head = ["mode", "k", "epochs / block", "final test acc %", "best stage: acc %", "ensemble acc %", "train s",
            "process s", "training FLOPs", "images / block", "peak activations MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = "—" if r["best_stage"] is None else \
            f"{r['best_stage']}: {_pm(r['best_stage_acc_mean'], r['best_stage_acc_std'])}"
        cells = [r["mode"], str(r["k"]), str(r["epochs"]), _pm(r["final_acc_mean"], r["final_acc_std"]), best,
                 _pm(r["ensemble_acc_mean"], r["ensemble_acc_std"]),
                 _pm(r["train_s_mean"], r["train_s_std"], 1, 1), _pm(r["process_s_mean"], r["process_s_std"], 1, 1),
                 _flops_text(r["train_flops"]) + (" ¹" if r["feature_cache"] else ""),
                 f"{r['images_per_block']:,}", f"{r['peak_activation_bytes'] / 2**20:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_table(groups: list[Group]) -> str:
    """Test accuracy (%) of each stage's head, mean ± std over seeds."""
    stages = max(len(g.results[0].summary["stage_test_acc"]) for g in groups)
    head = ["mode", "k", *(f"stage {j + 1}" for j in range(stages))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [_pm(m, s) for m, s in g.depth]
        if g.mode == "e2e":  # only the last head is trained
            cells = ["—"] * (stages - 1) + cells
        lines.append("| " + " | ".join([g.mode, str(g.k), *cells]) + " |")
    return "\n".join(lines)


def memory_table(groups: list[Group]) -> str:
    """MiB saved for backward in one training step of each greedy stage / decoupled part, and of the e2e net."""
    pieces = max(len(g.cost.piece_activation_bytes) for g in groups)
    head = ["mode", "k", *(f"module {j + 1}" for j in range(pieces)), "max", "vs e2e"]
    e2e = {g.k: g.cost.peak_activation_bytes for g in groups if g.mode == "e2e"}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        sizes = [f"{b / 2**20:.1f}" for b in g.cost.piece_activation_bytes]
        if g.mode == "e2e":
            sizes = ["—"] * (pieces - 1) + ["(whole net)"]
        ratio = f"{g.cost.peak_activation_bytes / e2e[g.k]:.2f}x" if g.k in e2e else "—"
        cells = [g.mode, str(g.k), *sizes, f"{g.cost.peak_activation_bytes / 2**20:.1f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots

LINESTYLES = {"greedy": "-", "decoupled": "--", "e2e": ":"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(7, 4.5), dpi=100)


def _png(plt, fig) -> bytes:
    """The figure as PNG bytes, without metadata that would change between identical plots."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _colors(groups: list[Group]) -> dict[int, str]:
    return {k: f"C{i}" for i, k in enumerate(sorted({g.k for g in groups}))}


def plot_depth(groups: list[Group]) -> bytes:
    """Test accuracy of stage j's head (greedy, decoupled), mean ± std over seeds; e2e's final as a line per k."""
    plt, fig, ax = _figure()
    colors = _colors(groups)
    for g in groups:
        mean = [100 * m for m, _ in g.depth]
        std = [0.0 if math.isnan(s) else 100 * s for _, s in g.depth]
        label = f"{g.mode} k={g.k}"
        if g.mode == "e2e":
            ax.axhline(mean[-1], color=colors[g.k], ls=LINESTYLES["e2e"], label=f"{label} (final)")
            continue
        stages = range(1, len(g.depth) + 1)
        ax.errorbar(stages, mean, yerr=std, color=colors[g.k],
                    ls=LINESTYLES[g.mode], marker="o", capsize=3, label=label)
    ax.set(xlabel="stage (block) j", ylabel="test accuracy of head j (%)", title="Accuracy by depth")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_time(groups: list[Group]) -> bytes:
    """Test accuracy after every epoch against training seconds so far, both averaged over seeds."""
    plt, fig, ax = _figure()
    colors = _colors(groups)
    for g in groups:
        curves = [time_curve(r) for r in g.results]
        n = min(len(c) for c in curves)
        seconds = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
        accs = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(n)]
        ax.plot(seconds, accs, color=colors[g.k], ls=LINESTYLES[g.mode], marker=".", label=f"{g.mode} k={g.k}")
    ax.set(xlabel="training wall time (s, cumulative over stages)", ylabel="test accuracy (%)",
           title="Accuracy vs wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_memory(groups: list[Group]) -> bytes:
    """Peak activation memory (bytes saved for backward in one step) per mode, bars grouped by k."""
    plt, fig, ax = _figure()
    modes = list(dict.fromkeys(g.mode for g in groups))
    ks = sorted({g.k for g in groups})
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        found = {g.k: g.cost.peak_activation_bytes / 2**20 for g in groups if g.mode == mode}
        xs = [ks.index(k) + (i - (len(modes) - 1) / 2) * width for k in found]
        bars = ax.bar(xs, list(found.values()), width, label=mode, color=f"C{MODES.index(mode)}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
    ax.set(ylabel="MiB saved for backward (one step, max over stages)", title="Peak activation memory per mode")
    ax.legend(fontsize=8)
    return _png(plt, fig)
