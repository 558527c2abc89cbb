"""The cache bench: train.py with the frozen-prefix feature cache off and on, on the config's real data."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from greedy.checkpoint import RunDir
from greedy.profiling import median
from greedy.schema import Config
from scripts.benchmarks.common import ROOT, markdown, run_all


def train_command(args: argparse.Namespace, cache: str, out: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "-c", args.config, "--cache", cache, "--out-dir", str(out),
           "--name", f"cache-{cache}", "--no-progress"]
    for flag, value in (("--data-dir", args.data_dir), ("--epochs", args.epochs)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.mixed_precision != "no":
        cmd += ["--mixed-precision", args.mixed_precision]
    if args.channels_last:
        cmd += ["--channels-last"]
    return cmd + shlex.split(args.train_args)


def run_result(cmd: list[str], returncode: int, wall: float, run: Path, log: Path) -> dict:
    """A finished train.py run: wall time, per-stage step and stage times, cache times, test accuracy."""
    stdout = log.read_text()
    if returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{stdout}")
    records = RunDir(run).read_metrics()  # epoch records
    summary = json.loads((run / "summary.json").read_text())
    stages = sorted({r["stage"] for r in records})
    step = {s: median([r["step_time"] for r in records if r["stage"] == s]) for s in stages}
    stage_s = {s: max(r["time"] for r in records if r["stage"] == s) for s in stages}  # includes its cache build
    cache_s = {s: max(r.get("cache_time", 0.0) for r in records if r["stage"] == s) for s in stages}
    return {"command": shlex.join(["python", "train.py", *cmd[2:]]), "wall_s": wall,  # portable, as in the docs
            "step_ms": {s: 1000 * v for s, v in step.items()},
            "stage_s": stage_s, "cache_s": cache_s, "stage_test_acc": summary["stage_test_acc"],
            "cache_lines": re.findall(r"^cache: .*$", stdout, re.M)}


def cache_compare(args: argparse.Namespace) -> dict:
    """train.py --cache off and on, started together (each with --threads threads, default 1) so that whatever
    else runs on the machine slows both alike; or one after the other with --sequential."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    threads = args.threads or (None if args.sequential else 1)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with (contextlib.nullcontext(args.work_dir) if args.work_dir
          else tempfile.TemporaryDirectory(prefix="bench-cache-")) as tmp:
        out = Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        commands = {f"cache-{c}": train_command(args, c, out) for c in ("off", "on")}
        done = run_all(commands, env, out, args.sequential)
        runs = {name.removeprefix("cache-"): run_result(cmd, *done[name], out / name, out / f"{name}.log")
                for name, cmd in commands.items()}
    off, on = runs["off"], runs["on"]
    rows = [{"stage": s, "off_step_ms": off["step_ms"][s], "on_step_ms": on["step_ms"][s],
             "off/on": off["step_ms"][s] / on["step_ms"][s], "off_stage_s": off["stage_s"][s],
             "on_stage_s": on["stage_s"][s], "on_cache_build_s": on["cache_s"][s],
             "off_test_acc": off["stage_test_acc"][s - 1],
             "on_test_acc": on["stage_test_acc"][s - 1]} for s in sorted(off["step_ms"])]
    rows.append({"stage": "all stages (incl. cache builds)", "off_stage_s": sum(off["stage_s"].values()),
                 "on_stage_s": sum(on["stage_s"].values()), "on_cache_build_s": sum(on["cache_s"].values())})
    rows.append({"stage": "wall (process)", "off_stage_s": off["wall_s"], "on_stage_s": on["wall_s"]})
    return {"runs": runs, "rows": rows, "threads_per_run": threads, "concurrent": not args.sequential}


def run(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the cache bench."""
    result = cache_compare(args)
    how = "at once" if result["concurrent"] else "one after the other"
    table = (markdown(result["rows"]) +
             f"\n\ntrain.py runs: {how}, OMP_NUM_THREADS={result['threads_per_run'] or 'unset'} each")
    return {"cache_compare": result}, table
