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
from greedy.schema import FIELDS, MODES, RESUME_MUTABLE, Config

BUDGETS = ("per_stage", "total")


# ---------------------------------------------------------------------------------------------- the grid


# The methods of the local-learning table (InfoPro, Wang et al. ICLR 2021, Table 2): each is config overrides on
# one config and split K. The local methods train in the comparison's mode for them (greedy or decoupled).
METHODS: dict[str, dict[str, Any]] = {
    "greedy_sl": {"objective": "ce"},  # the config's auxiliary net, cross-entropy
    "dgl": {"objective": "ce", "aux": "mlp_sr"},  # Belilovsky, Eickenberg, Oyallon, ICML 2020
    "predsim": {"objective": "predsim"},  # Nokland & Eidnes, ICML 2019
    "infopro_ce": {"objective": "infopro_ce"},  # Wang et al., ICLR 2021
    "infopro_contrast": {"objective": "infopro_contrast"},
    "auglocal": {"objective": "auglocal"},  # Ma et al., ICLR 2024
    "man": {"objective": "man"},  # Su et al., ECCV 2024 (on InfoPro contrast: man_base)
    "man_pp": {"objective": "man_pp"},  # Su et al., TPAMI 2026
    "e2e": {"mode": "e2e", "objective": "ce"},
    "e2e_ckpt": {"mode": "e2e", "objective": "ce", "grad_checkpoint": True},  # the memory baseline
}


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: a mode (and k, None where no auxiliary net of the run reads it) of the config, or
    one of METHODS in `mode`."""

    mode: str
    k: int | None
    seed: int
    method: str | None = None

    @property
    def name(self) -> str:
        if self.method:
            return f"{self.method}-s{self.seed}"
        return f"{self.mode}-s{self.seed}" if self.k is None else f"{self.mode}-k{self.k}-s{self.seed}"

    @property
    def label(self) -> str:
        """What the tables call the run's group: the method, or the mode."""
        return self.method or self.mode

    def overrides(self) -> dict[str, Any]:
        """The config keys this run sets (k its default where no auxiliary net reads it)."""
        k = FIELDS["k"].default if self.k is None else self.k
        return {"mode": self.mode, "k": k, "seed": self.seed, **METHODS.get(self.method, {})}


def run_specs(modes: list[str], ks: list[int], seeds: list[int], reads_k: Callable[[str], bool]) -> list[RunSpec]:
    """Every (mode, k, seed), grouped by k then mode, so that a k's comparison is complete early. A mode whose
    auxiliary nets do not read k (`reads_k(mode)` false: e2e with a linear last head, aux mlp_sr, ...) runs once
    per seed, with k None, instead of once per k."""
    specs = [RunSpec(m, k if reads_k(m) else None, s) for k in ks for m in modes for s in seeds]
    return list(dict.fromkeys(specs))


def method_specs(methods: list[str], mode: str, k: int, seeds: list[int]) -> list[RunSpec]:
    """Every (method, seed), the local methods in `mode` (greedy or decoupled), grouped by method. Raises
    UsageError for an unknown method or a mode that is not local."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UsageError(f"--methods: unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods: {','.join(methods)} names a method twice")
    if mode not in ("greedy", "decoupled"):
        raise UsageError(f"--modes: with --methods, the one mode the local methods train in (greedy or decoupled), "
                         f"not {mode!r}")
    return [RunSpec(METHODS[m].get("mode", mode), k, s, m) for m in methods for s in seeds]


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


# ---------------------------------------------------------------------------------------------- runs that exist


# Keys that say how a run executed or is named, not what it trained: runs differing only in these and the seed are
# one group of a table of existing runs.
EXECUTION_KEYS = frozenset({"seed", "name", "out_dir", "experiment", "tracker", "wandb_project", *RESUME_MUTABLE})


def finished_runs(paths: list[str]) -> list[tuple[Path, Config]]:
    """Each run directory and its saved config. Raises UsageError for a path that is not a run directory, a run
    that has not finished, a run given twice, or runs of different data sets (one table compares one task)."""
    runs, seen = [], {}
    for given in paths:
        run = RunDir.open(given)
        if run_status(run.path) != "done":
            raise UsageError(f"{given} has not finished (no summary.json); finish it with `python train.py --resume "
                             f"{given}` or leave it out")
        key = run.path.resolve()
        if key in seen:
            raise UsageError(f"{given} is given twice (also as {seen[key]}); name each run once")
        seen[key] = given
        runs.append((run.path, run.load_config()))
    datasets = list(dict.fromkeys(cfg.dataset for _, cfg in runs))
    if len(datasets) > 1:
        raise UsageError(f"the runs are on different data sets ({', '.join(datasets)}); one table compares runs of "
                         "one data set")
    return runs


def group_runs(runs: list[tuple[Path, Config]]) -> tuple[list[str], list[tuple[str, list[tuple[Path, Config]]]]]:
    """Runs whose configs differ only in EXECUTION_KEYS are one group (its seeds averaged), in the order first
    given. Returns the config keys in which the groups differ and each group labelled by them ("mode=greedy
    k=1"), or by its mode (and objective) when there is one group."""
    by_identity: dict[str, list[tuple[Path, Config]]] = {}
    for path, cfg in runs:
        identity = {k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_KEYS}
        by_identity.setdefault(json.dumps(identity, sort_keys=True), []).append((path, cfg))
    members = list(by_identity.values())
    dicts = [group[0][1].to_dict() for group in members]
    differing = [k for k in dicts[0] if k not in EXECUTION_KEYS and len({json.dumps(d[k]) for d in dicts}) > 1]

    def shown(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    labelled = []
    for group in members:
        cfg = group[0][1]
        if differing:
            label = " ".join(f"{k}={shown(getattr(cfg, k))}" for k in differing)
        else:
            label = cfg.mode + (f" {cfg.objective}" if cfg.objective != "ce" else "")
        labelled.append((label, group))
    return differing, labelled


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
        curve.append((offset + r["time"], r["val_acc"] if "val_acc" in r else r["test_acc"]))
    return curve


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class Group:
    """The runs of one (mode, k) or method over seeds, and their cost."""

    mode: str
    k: int
    results: list[RunResult]
    cost: Cost
    method: str | None = None
    depth: list[tuple[float, float]] = field(init=False)  # mean, std of each stage's head on the test set
    # the same on the validation split, where every run of the group has one (val_split); None otherwise
    val_depth: list[tuple[float, float]] | None = field(init=False)

    @property
    def label(self) -> str:
        return self.method or self.mode

    def __post_init__(self) -> None:
        by_stage = zip(*(accuracy_by_depth(r) for r in self.results), strict=True)
        self.depth = [mean_std(list(accs)) for accs in by_stage]
        self.val_depth = None
        if all("stage_val_acc" in r.summary for r in self.results):
            by_stage = zip(*(r.summary["stage_val_acc"] for r in self.results), strict=True)
            self.val_depth = [mean_std(list(accs)) for accs in by_stage]

    def values(self, get: Callable[[RunResult], float | None]) -> tuple[float, float]:
        found = [v for v in map(get, self.results) if v is not None]
        return mean_std(found)


def aggregate(groups: list[Group]) -> list[dict[str, Any]]:
    """One flat row per (mode, k): mean and std over seeds of every reported number."""
    rows = []
    for g in groups:
        final = g.values(lambda r: r.summary["final_test_acc"])
        per_block = g.mode != "e2e"
        select = g.val_depth or g.depth  # chosen on the validation split where there is one, else on the test set
        best = max(range(len(select)), key=lambda j: select[j][0]) if per_block else None
        ensemble = g.values(lambda r: r.summary["ensemble_acc"][-1]) if per_block else (math.nan, math.nan)
        train_s = g.values(lambda r: r.summary["total_time_s"])
        process_s = g.values(lambda r: r.process_seconds)
        rows.append({
            **({"method": g.method} if g.method else {}),
            "mode": g.mode, "k": g.k, "seeds": len(g.results), "epochs": g.cost.epochs,
            "final_acc_mean": final[0], "final_acc_std": final[1],
            "best_stage": best + 1 if best is not None else None, "selected_on": "val" if g.val_depth else "test",
            "best_stage_acc_mean": g.depth[best][0] if best is not None else math.nan,
            "best_stage_acc_std": g.depth[best][1] if best is not None else math.nan,
            "ensemble_acc_mean": ensemble[0], "ensemble_acc_std": ensemble[1],
            "train_s_mean": train_s[0], "train_s_std": train_s[1],
            "process_s_mean": process_s[0], "process_s_std": process_s[1],
            "train_flops": g.cost.train_flops, "cache_flops": g.cost.cache_flops, "feature_cache": g.cost.cached,
            "images_per_block": g.cost.images_per_block, "peak_activation_bytes": g.cost.peak_activation_bytes,
            "auxiliary_params": g.cost.auxiliary_params,
        })
    return rows


# ---------------------------------------------------------------------------------------------- tables


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """'91.23 ± 0.12' (accuracies in percent); '—' when missing, no ± for one seed."""
    if math.isnan(mean):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def k_text(k: int | None) -> str:
    """A table's k cell: '—' where no auxiliary net of the run reads k."""
    return "—" if k is None else str(k)


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
    methods = "method" in rows[0]
    head = [*(["method"] if methods else []), "mode", "k", "epochs / block", "final test acc %", "best stage: acc %",
            "ensemble acc %", "train s", "process s", "training FLOPs", "images / block", "peak activations MiB",
            "auxiliary params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = "—" if r["best_stage"] is None else \
            f"{r['best_stage']}: {_pm(r['best_stage_acc_mean'], r['best_stage_acc_std'])}"
        cells = [*([r["method"]] if methods else []), r["mode"], k_text(r["k"]), str(r["epochs"]),
                 _pm(r["final_acc_mean"], r["final_acc_std"]), best,
                 _pm(r["ensemble_acc_mean"], r["ensemble_acc_std"]),
                 _pm(r["train_s_mean"], r["train_s_std"], 1, 1), _pm(r["process_s_mean"], r["process_s_std"], 1, 1),
                 _flops_text(r["train_flops"]) + (" ¹" if r["feature_cache"] else ""),
                 f"{r['images_per_block']:,}", f"{r['peak_activation_bytes'] / 2**20:.1f}",
                 f"{r['auxiliary_params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_table(groups: list[Group]) -> str:
    """Test accuracy (%) of each stage's head, mean ± std over seeds."""
    stages = max(len(g.results[0].summary["stage_test_acc"]) for g in groups)
    head = ["method" if groups[0].method else "mode", "k", *(f"stage {j + 1}" for j in range(stages))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [_pm(m, s) for m, s in g.depth]
        if g.mode == "e2e":  # only the last head is trained
            cells = ["—"] * (stages - 1) + cells
        lines.append("| " + " | ".join([g.label, k_text(g.k), *cells]) + " |")
    return "\n".join(lines)


def memory_table(groups: list[Group]) -> str:
    """MiB saved for backward in one training step of each greedy stage / decoupled part, and of the e2e net."""
    pieces = max(len(g.cost.piece_activation_bytes) for g in groups)
    head = ["method" if groups[0].method else "mode", "k", *(f"module {j + 1}" for j in range(pieces)), "max",
            "vs e2e"]
    e2e = {g.k: g.cost.peak_activation_bytes for g in groups if g.label == "e2e"}
    if len(e2e) == 1 and None in e2e:  # e2e reads no k: one reference for every k
        e2e = {g.k: e2e[None] for g in groups}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        sizes = [f"{b / 2**20:.1f}" for b in g.cost.piece_activation_bytes]
        if g.mode == "e2e":
            sizes = ["—"] * (pieces - 1) + ["(whole net)"]
        ratio = f"{g.cost.peak_activation_bytes / e2e[g.k]:.2f}x" if g.k in e2e else "—"
        cells = [g.label, k_text(g.k), *sizes, f"{g.cost.peak_activation_bytes / 2**20:.1f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
