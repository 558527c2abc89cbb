"""Greedy vs end-to-end vs decoupled training of one config, or the methods of local learning on one split: same
architecture, data, augmentation and seeds; or a table of run directories that exist, without training.

    python scripts/compare.py runs/a runs/b runs/c                        # finished runs, compared as they are
    python scripts/compare.py -c configs/digits_k2.yaml --seeds 0,1
    python scripts/compare.py -c configs/fashion_mnist_compare.yaml --k 1,2,3 --seeds 0,1 --jobs 2 \\
        -- --data-dir ../shared/data/fashion-mnist
    python scripts/compare.py -c configs/cifar10_k3.yaml --k 3 \\
        --launcher "accelerate launch --multi_gpu --num_processes 8" -- --data-dir /data/cifar10
    python scripts/compare.py -c configs/imagenet_k3.yaml --k 3 --plan       # the commands and costs, no training
    python scripts/compare.py -c configs/fashion_mnist_resnet.yaml --seeds 0,1 --modes decoupled \\
        --methods greedy_sl,dgl,predsim,infopro_ce,infopro_contrast,e2e,e2e_ckpt \\
        -- --num-modules 4 --data-dir ../shared/data/fashion-mnist

Every (mode, k, seed) is one `train.py` run in OUT_DIR/EXPERIMENT/<mode>-k<k>-s<seed>/; with --methods, every
(method, seed) of greedy.compare.METHODS on the config's split, in OUT_DIR/EXPERIMENT/<method>-s<seed>/. Runs are
resumable: one whose summary.json exists is not run again, a run directory without it is continued with
`train.py --resume`. Arguments after `--` are train.py config overrides shared by every run. Then
OUT_DIR/EXPERIMENT/ gets comparison.md, comparison.csv, accuracy_by_depth.png, accuracy_vs_time.png, memory.png
and loss_terms.png; logs/ keeps each run's output and process wall time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greedy import compare  # noqa: E402
from greedy import compare_report as report  # noqa: E402
from greedy.checkpoint import RunDir  # noqa: E402
from greedy.compare import Group, RunSpec  # noqa: E402
from greedy.config import build_config, config_arguments, load_yaml, make_parser  # noqa: E402
from greedy.config import overrides_from_args as config_overrides  # noqa: E402
from greedy.cost import measure_cost, train_size  # noqa: E402
from greedy.errors import UsageError, run_cli, warn  # noqa: E402
from greedy.schema import MODES, RESUME_MUTABLE, Config, head_takes, shared_values  # noqa: E402

# Keys the comparison sets for each run: not overridable after `--`.
OWNED = {"mode": "--modes", "k": "--k", "seed": "--seeds", "name": "--experiment", "out_dir": "--out-dir",
         "experiment": "--experiment", "tracker": "--wandb"}
EXAMPLES = """examples:
  python scripts/compare.py runs/a runs/b runs/c       finished runs as they are: the table and plots, no training
  python scripts/compare.py -c configs/digits_k2.yaml --seeds 0,1 -- --epochs 3
      modes greedy,e2e,decoupled x k 1,2,3 x seeds 0,1 (12 runs, e2e once per seed where it reads no k); what
      follows `--` is train.py's config overrides, shared by every run
  python scripts/compare.py -c configs/fashion_mnist_resnet.yaml --methods dgl,infopro_contrast,e2e --seeds 0,1 \\
      -- --num-modules 4 --data-dir ../shared/data/fashion-mnist
  python scripts/compare.py -c configs/imagenet_k3.yaml --k 3 --plan      the commands and costs, no training

Defaults without flags: the three modes x k 1,2,3 x seeds 0,1,2 = 27 runs where the auxiliary net reads k."""


def get_args(argv: list[str]) -> argparse.Namespace:
    """compare.py's own options; everything after `--` goes to train.py as config overrides."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = make_parser("compare.py", "Train one config in several modes (or local-learning methods) x seeds and "
                    "compare them in one table; or compare run directories that exist, without training.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="finished run directories to compare as they are "
                   "(instead of -c): runs differing only in seed are averaged")
    p.add_argument("-c", "--config", help="YAML config (configs/*.yaml) to train the grid of")
    p.add_argument("--modes", help="comma-separated: greedy,e2e,decoupled (default: all three); with --methods "
                   "the one mode the local methods train in (default: the config's, decoupled if it is e2e)")
    p.add_argument("--k", help="comma-separated auxiliary-problem depths, each in 1..3 (default: 1,2,3 where an "
                   "auxiliary net of the run reads k (aux cnn), else none; with --methods the config's k)")
    p.add_argument("--methods", help=f"comma-separated methods on the config's split instead of modes x k: "
                   f"{','.join(compare.METHODS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--budget", default="per_stage", help="epochs of e2e and decoupled: per_stage | total (default: "
                   "per_stage)")
    p.add_argument("--experiment", help="the experiment folder and W&B group (default: <config>-compare, "
                   "<config>-methods, or runs-compare for RUN_DIRs)")
    p.add_argument("--out-dir", default="runs", help="where the experiment folder goes (default: runs)")
    p.add_argument("--launcher", help='command prefix instead of python, e.g. "accelerate launch --multi_gpu"')
    p.add_argument("--jobs", type=int, default=1, help="runs at once (CPU: each gets cores/jobs threads; default: 1)")
    p.add_argument("--wandb", action="store_true", help="log every run and a summary table to W&B")
    p.add_argument("--plan", action="store_true", help="print the runs, their commands and costs; train nothing")
    moved = train_flags_before_separator(p, own)
    if moved:
        kept = [a for i, a in enumerate(own) if i not in moved]
        given = [own[i] for i in sorted(moved)]
        raise UsageError(f"unrecognized arguments: {shlex.join(given)}; train.py's config overrides go after `--`: "
                         f"compare.py {shlex.join(kept)} -- {shlex.join(given + extra)}")
    args = p.parse_args(own)
    if args.runs and args.config:
        raise UsageError("give -c CONFIG (train a grid and compare it) or RUN_DIRs (compare runs that exist), not "
                         "both")
    if not args.runs and not args.config:
        raise UsageError("nothing to compare: pass -c configs/<name>.yaml to train and compare a grid, or finished "
                         "run directories (compare.py runs/a runs/b ...)")
    if args.runs:
        grid_only = [flag for flag, given in (("--modes", args.modes), ("--k", args.k), ("--methods", args.methods),
                     ("--launcher", args.launcher), ("--plan", args.plan), ("--wandb", args.wandb),
                     ("--jobs", args.jobs != 1), ("--budget", args.budget != "per_stage"),
                     ("--seeds", args.seeds != "0,1,2"), (f"-- {shlex.join(extra)}", extra)) if given]
        if grid_only:
            raise UsageError(f"{grid_only[0]} is for training a grid (-c); RUN_DIRs are compared as they were "
                             "trained: drop it")
    args.train_args = extra
    return args


def train_flags_before_separator(parser: argparse.ArgumentParser, own: list[str]) -> set[int]:
    """The positions in `own` of train.py config flags that compare.py does not take (`--epochs 3` given before
    `--`), with their values."""
    train = make_parser("train.py", "")
    config_arguments(train)
    ours = {o for action in parser._actions for o in action.option_strings}
    theirs = {o for action in train._actions for o in action.option_strings} - ours
    found: set[int] = set()
    for i, arg in enumerate(own):
        if arg.split("=")[0] in theirs:
            found.add(i)
            if "=" not in arg and i + 1 < len(own) and not own[i + 1].startswith("--"):
                found.add(i + 1)
    return found


def int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a comma-separated list of integers") from None


def train_overrides(extra: list[str]) -> dict[str, Any]:
    """The config overrides after `--`, checked like train.py checks them."""
    parser = make_parser("compare.py ... --", "train.py config overrides")
    config_arguments(parser)
    overrides = config_overrides(parser.parse_args(extra))
    owned = [k for k in overrides if k in OWNED]
    if owned:
        raise UsageError(f"--{owned[0].replace('_', '-')} after `--`: compare.py sets it per run; use "
                         f"compare.py's {OWNED[owned[0]]}")
    return overrides


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class Run:
    """One run of the grid: its config, directory and train.py arguments."""

    spec: RunSpec
    cfg: Config
    path: Path
    overrides: dict[str, Any]  # what train.py gets on top of the YAML file

    @property
    def status(self) -> str:
        return compare.run_status(self.path)


@dataclass
class Plan:
    args: argparse.Namespace
    base: Config  # the YAML file with the overrides after `--`
    experiment: str
    folder: Path
    runs: list[Run]


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every input and resolve every run's config before anything runs."""
    yaml_values = load_yaml(args.config)
    extra = train_overrides(args.train_args)
    shared = {**yaml_values, **extra}  # what every run of the grid starts from
    where = args.config + (" and the overrides after --" if extra else "")
    base = build_config(shared_values(shared, {}, where)[0], check_data=False)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    seeds = int_list("--seeds", args.seeds)
    def reads_k(overrides: dict[str, Any]) -> bool:
        return head_takes(Config(**{**yaml_values, **extra, **overrides}), "k")

    if methods:
        specs = [spec if reads_k(compare.METHODS[spec.method] | {"mode": spec.mode}) else replace(spec, k=None)
                 for spec in method_specs(args, base, methods, seeds, extra)]
    else:
        modes = [m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip()]
        ks = int_list("--k", args.k or "1,2,3")
        compare.check_grid(modes, ks, seeds, args.budget)
        if args.k and len(ks) > 1 and not any(reads_k({"mode": m}) for m in modes):
            raise UsageError(f"--k {args.k}: no auxiliary net of this config reads k (aux {base.aux}, final_head "
                             f"{base.final_head}); the runs would be identical: drop --k")
        specs = compare.run_specs(modes, ks, seeds, lambda mode: reads_k({"mode": mode}))
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be at least 1, got {args.jobs}")
    if args.jobs > 1 and args.launcher:
        raise UsageError("--jobs above 1 with --launcher: the runs would share the launcher's devices; drop --jobs")
    experiment = args.experiment or f"{Path(args.config).stem}-{'methods' if methods else 'compare'}"
    folder = Path(args.out_dir) / experiment
    runs, warnings = [], []
    for spec in specs:
        own = {**spec.overrides(), "out_dir": str(folder), "name": spec.name, "experiment": experiment,
               "no_progress": True, **({"tracker": "wandb"} if args.wandb else {})}
        values, lines = shared_values(shared, own, where)  # a key only some modes read: dropped where unread
        warnings += [line for line in lines if line not in warnings]
        budget = compare.budget_overrides(build_config(values, check_data=False), spec.mode, args.budget)
        cfg = build_config({**values, **budget}, check_data=not args.plan)
        kept = {key: value for key, value in extra.items() if key in values}
        runs.append(Run(spec, cfg, folder / spec.name, {**kept, **own, **budget}))
    for line in warnings:  # once for the grid (each run's log repeats those of the YAML file)
        warn(line)
    return Plan(args, base, experiment, folder, runs)


def method_specs(args: argparse.Namespace, base: Config, methods: list[str], seeds: list[int],
                 extra: dict[str, Any]) -> list[compare.RunSpec]:
    """The runs of `--methods`: every method x seed on the config's split, the local methods in one mode."""
    set_by_methods = sorted({key for m in methods for key in compare.METHODS.get(m, {})} & set(extra))
    if set_by_methods:
        raise UsageError(f"--{set_by_methods[0].replace('_', '-')} after `--`: --methods sets it per method; drop it")
    if args.budget not in compare.BUDGETS:
        raise UsageError(f"--budget: {args.budget!r} is not one of {', '.join(compare.BUDGETS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else []
    if len(modes) > 1:
        raise UsageError(f"--modes: with --methods, the one mode the local methods train in, not {args.modes}")
    mode = modes[0] if modes else ("decoupled" if base.mode == "e2e" else base.mode)
    ks = int_list("--k", args.k) if args.k else [base.k]
    if len(ks) != 1 or not 1 <= ks[0] <= 3:
        raise UsageError(f"--k: with --methods, one auxiliary-problem depth in 1..3, not {args.k}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: {args.seeds} must name at least one seed, each once")
    return compare.method_specs(methods, mode, ks[0], seeds)


def check_existing(run: Run) -> None:
    """A run directory already there must hold this run: same config but for how it executes."""
    status = run.status
    if status == "new":
        return
    saved = RunDir.open(run.path).load_config().to_dict()
    ignore = set(RESUME_MUTABLE) | ({"tracker"} if status == "done" else set())
    for key, want in run.cfg.to_dict().items():
        if key not in ignore and saved.get(key) != want:
            raise UsageError(f"{run.path} was trained with {key}: {saved.get(key)} but this comparison asks for "
                             f"{want}; pass another --experiment (or delete that run)")


# ---------------------------------------------------------------------------------------------- running


def flag_value(value: Any) -> str:
    """A config value as train.py's command line takes it."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


def train_command(plan: Plan, run: Run) -> list[str]:
    """train.py for a new run, or --resume for a run directory without summary.json."""
    prefix = shlex.split(plan.args.launcher) if plan.args.launcher else [sys.executable]
    if run.status == "partial":  # only what may differ on resume (e.g. a moved data directory)
        keep = {k: v for k, v in run.overrides.items() if k in RESUME_MUTABLE}
        args = ["--resume", str(run.path)]
    else:
        keep, args = run.overrides, ["-c", plan.args.config]
    for key, value in keep.items():
        args += [f"--{key.replace('_', '-')}", flag_value(value)]
    return [*prefix, os.path.relpath(ROOT / "train.py"), *args]


def run_env(jobs: int) -> dict[str, str]:
    """Runs at once share the cores: each gets its part of them as threads, unless OMP_NUM_THREADS is set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def execute(plan: Plan, run: Run, env: dict[str, str], label: str) -> tuple[Run, int, float, Path]:
    """Run one train.py to the end, its output appended to logs/<run>.log: (run, exit code, seconds, log)."""
    cmd = train_command(plan, run)
    log = plan.folder / "logs" / f"{run.spec.name}.log"
    print(f"{label} {'resuming' if run.status == 'partial' else 'training'} {run.spec.name} (log: {log})", flush=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        t0 = time.perf_counter()
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return run, code, time.perf_counter() - t0, log


def children_cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_seconds_path(plan: Plan) -> Path:
    return plan.folder / "logs" / "process_seconds.json"


def run_all(plan: Plan, todo: list[Run]) -> None:
    """Train the runs not done yet, `--jobs` at a time; the process wall time of each is added up in logs/."""
    (plan.folder / "logs").mkdir(parents=True, exist_ok=True)
    times_path = process_seconds_path(plan)
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    env, failed = run_env(plan.args.jobs), []
    t0, cpu0 = time.perf_counter(), children_cpu_seconds()
    with ThreadPoolExecutor(plan.args.jobs) as pool:
        futures = [pool.submit(execute, plan, run, env, f"[{i}/{len(todo)}]") for i, run in enumerate(todo, 1)]
        for future in as_completed(futures):
            run, code, seconds, log = future.result()
            times[run.spec.name] = times.get(run.spec.name, 0.0) + seconds
            times_path.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
            if code != 0:
                failed.append((run, code, log))
                print(f"{run.spec.name} failed (exit code {code}) after {seconds:.0f} s; see {log}")
            else:
                acc = json.loads((run.path / "summary.json").read_text())["final_test_acc"]
                print(f"{run.spec.name} done in {seconds:.0f} s: final test accuracy {acc:.4f}")
    if todo:
        wall, cpu = time.perf_counter() - t0, children_cpu_seconds() - cpu0
        print(f"{len(todo)} run(s) in {wall:.0f} s wall time, {cpu:.0f} CPU-seconds ({cpu / wall:.2f} of "
              f"{os.cpu_count()} cores busy with them on average)")
    if failed:
        last = failed[0][2].read_text().strip().splitlines()[-1:]
        message = (f"{len(failed)} run(s) failed ({', '.join(r.spec.name for r, _, _ in failed)}); "
                   f"first: {last[0] if last else '?'}; fix it and run the same command again to continue")
        if all(code == 2 for _, code, _ in failed):
            raise UsageError(message)
        raise SystemExit(f"error: {message}")


# ---------------------------------------------------------------------------------------------- the report


def groups_of(plan: Plan, n_train: int) -> list[Group]:
    """The finished runs of each (mode, k) over seeds, with its cost measured on the config it ran with."""
    times_path = process_seconds_path(plan)
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    by_key: dict[tuple[str, int], list[Run]] = {}
    for run in plan.runs:
        by_key.setdefault((run.spec.label, run.spec.k), []).append(run)
    groups = []
    for runs in by_key.values():
        spec = runs[0].spec
        results = [compare.load_result(r.spec, r.path, times.get(r.spec.name)) for r in runs]
        groups.append(Group(spec.mode, spec.k, results, measure_cost(runs[0].cfg, n_train), spec.method))
    return groups


def write_grid_report(plan: Plan, command: str) -> list[dict[str, Any]]:
    groups = groups_of(plan, train_size(plan.runs[0].cfg))
    methods = groups[0].method is not None
    mode = plan.runs[0].spec.mode if plan.runs[0].spec.mode != "e2e" else plan.base.mode
    header = report.grid_header(plan.experiment, plan.args.config, plan.base, plan.args.budget, mode, methods,
                                command)
    return report.write_report(plan.folder, header, groups, methods)


def log_to_wandb(plan: Plan, rows: list[dict[str, Any]]) -> None:
    """One W&B run (job_type compare) in the experiment's group: the table and the plots."""
    from greedy.tracking import offline_without_credentials

    offline = offline_without_credentials()
    import wandb

    run = wandb.init(project=plan.base.wandb_project, group=plan.experiment, job_type="compare",
                     name=f"{plan.experiment}-compare", dir=str(plan.folder), config=vars(plan.args))
    columns = list(rows[0])
    run.log({"comparison": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
             **{name.removesuffix(".png"): wandb.Image(str(plan.folder / name)) for name in report.PLOTS}})
    where = run.dir.rsplit("/files", 1)[0]
    run.finish()
    if offline:
        print(f"W&B comparison run saved offline in {where}; upload it with `wandb sync {where}`")


def plan_costs(plan: Plan) -> str:
    """What each (mode, k) will cost, before training: FLOPs, images per block, peak activation memory."""
    n_train = train_size(plan.runs[0].cfg)
    lines = [f"{n_train:,} training images", "| mode | k | epochs / block | training FLOPs | images / block | "
             "peak activations MiB |", "|---|---|---|---|---|---|"]
    seen = set()
    for run in plan.runs:
        if (run.spec.label, run.spec.k) in seen:
            continue
        seen.add((run.spec.label, run.spec.k))
        cost = measure_cost(run.cfg, n_train)
        lines.append(f"| {run.spec.label} | {compare.k_text(run.spec.k)} | {cost.epochs} | {cost.train_flops:.3g}"
                     f"{' (cached)' if cost.cached else ''} | {cost.images_per_block:,} | "
                     f"{cost.peak_activation_bytes / 2**20:.1f} |")
    return "\n".join(lines)


def hold_lock(folder: Path):
    """An exclusive lock on the experiment folder: two comparisons must not train the same runs at once."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"another compare.py is running on {folder} (it holds {folder / '.lock'}); wait for it "
                         f"to finish or pass another --experiment") from None
    return handle


def compare_existing(args: argparse.Namespace, command: str) -> int:
    """compare.py RUN_DIR ...: the table and plots of finished runs as they were trained; nothing trains."""
    runs = compare.finished_runs(args.runs)
    differing, labelled = compare.group_runs(runs)
    n_train = train_size(runs[0][1])
    groups = []
    for label, members in labelled:
        cfg = members[0][1]
        specs = [RunSpec(c.mode, c.k if head_takes(c, "k") else None, c.seed, label) for _, c in members]
        results = [compare.load_result(spec, path) for spec, (path, _) in zip(specs, members, strict=True)]
        groups.append(Group(cfg.mode, specs[0].k, results, measure_cost(cfg, n_train), label))
    experiment = args.experiment or "runs-compare"
    folder = Path(args.out_dir) / experiment
    header = report.runs_header(experiment, args.runs, differing, groups, command)
    report.write_report(folder, header, groups, methods=False)
    print((folder / "comparison.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args(argv)
    command = shlex.join(["python", "scripts/compare.py", *argv])
    if args.runs:
        return compare_existing(args, command)
    plan = make_plan(args)
    for run in plan.runs:
        check_existing(run)
    todo = [r for r in plan.runs if r.status != "done"]
    print(compare.budget_rule(plan.base, plan.args.budget))
    print(f"{plan.folder}: {len(plan.runs)} runs, {len(plan.runs) - len(todo)} done, {len(todo)} to run")
    if plan.args.plan:
        for run in plan.runs:
            print(f"{run.spec.name} [{run.status}]: {shlex.join(train_command(plan, run))}")
        print(plan_costs(plan))
        return 0
    lock = hold_lock(plan.folder)  # noqa: F841 (held until the process ends)
    run_all(plan, todo)
    rows = write_grid_report(plan, command)
    print((plan.folder / "comparison.md").read_text())
    if plan.args.wandb:
        log_to_wandb(plan, rows)
    return 0


if __name__ == "__main__":
    run_cli(main)
