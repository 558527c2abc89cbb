"""The pipeline bench: decoupled training pipelined over 2 processes vs 1 process (1 and 2 threads) vs data
parallel over 2 processes at the same global batch."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from greedy.schema import Config
from scripts.benchmarks.common import ROOT, markdown, run_all

LAUNCH_2 = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
# name: (processes, threads per process, train.py arguments beyond the shared ones)
PIPELINE_VARIANTS = {
    "pipelined 2 processes x 1 thread": (2, 1, ["--pipeline", "2"]),
    "sequential 1 process x 1 thread": (1, 1, []),
    "sequential 1 process x 2 threads": (1, 2, []),
    "data parallel 2 processes x 1 thread": (2, 1, []),  # --batch-size halved: the same global batch
}


def pipeline_compare(args: argparse.Namespace, cfg: Config) -> dict:
    """train.py --mode decoupled four ways, one after the other (each alone on the machine): pipelined over 2
    processes, sequential in 1 process with 1 and with 2 threads, and data-parallel over 2 processes at the same
    global batch. Time is the run's training time (summary total_time_s: its epochs, evaluation included, without
    process start-up); the pipelined run's processes report their busy fraction, peak memory and block bytes."""
    with (contextlib.nullcontext(args.work_dir) if args.work_dir
          else tempfile.TemporaryDirectory(prefix="bench-pipeline-")) as tmp:
        out = Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        runs = {}
        for i, (name, (procs, threads, extra)) in enumerate(PIPELINE_VARIANTS.items()):
            batch = cfg.batch_size // 2 if procs == 2 and not extra else cfg.batch_size
            launch = LAUNCH_2 if procs == 2 else []
            rest = ["-c", args.config, "--mode", "decoupled", "--batch-size", str(batch), "--out-dir", str(out),
                    "--name", f"v{i}", "--no-progress", *extra]
            for flag, value in (("--data-dir", args.data_dir), ("--epochs", args.epochs)):
                if value is not None:
                    rest += [flag, str(value)]
            rest += shlex.split(args.train_args)
            cmd = [sys.executable, *launch, str(ROOT / "train.py"), *rest]
            env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}
            if args.device == "cpu":
                env["ACCELERATE_USE_CPU"] = "1"
            (code, wall), = run_all({f"v{i}": cmd}, env, out, sequential=True).values()
            if code != 0:
                raise SystemExit(f"{shlex.join(cmd)} failed:\n{(out / f'v{i}.log').read_text()}")
            summary = json.loads((out / f"v{i}" / "summary.json").read_text())
            runs[name] = {"command": shlex.join(["python", *launch, "train.py", *rest]),  # portable, as in the docs
                          "processes": procs, "threads": threads, "train_s": summary["total_time_s"], "wall_s": wall,
                          "test_acc": summary["final_test_acc"], "pipeline": summary.get("pipeline")}
    pipelined = runs["pipelined 2 processes x 1 thread"]
    rows = [{"run": name, "train_s": r["train_s"], "speedup of pipelined": r["train_s"] / pipelined["train_s"],
             "final_test_acc": r["test_acc"]} for name, r in runs.items()]
    per_process = [{"process": f["rank"], "group": f["group"], "blocks": ",".join(map(str, f["blocks"])),
                    "busy": f["busy_fraction"], "peak_MiB": f["peak_bytes"] / 2**20,
                    "block_MiB": f["block_bytes"] / 2**20} for f in pipelined["pipeline"]]
    return {"runs": runs, "rows": rows, "per_process": per_process}


def run(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed tables) of the pipeline bench."""
    result = pipeline_compare(args, cfg)
    return {"pipeline_compare": result}, markdown(result["rows"]) + "\n\n" + markdown(result["per_process"])
