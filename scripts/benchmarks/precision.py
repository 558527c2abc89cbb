"""The precision bench: our step in fp32 and in bf16 + channels_last, images/s and peak memory per stage."""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from accelerate.state import AcceleratorState

from greedy.schema import Config
from scripts.benchmarks.common import MiB, markdown
from scripts.benchmarks.steps import bench_steps

PRECISIONS = {"fp32": ("no", False), "bf16+channels_last": ("bf16", True)}


def precision_rows(results: dict[str, dict], batch: int) -> list[dict]:
    """Per stage (and e2e, decoupled): our step's images/s and peak memory in fp32 and in bf16 + channels_last."""
    (a, ra), (b, rb) = results.items()
    names = [f"s{s}/trainer" for s in ra["stages"]] + ["e2e", "decoupled"]
    rows = []
    for name in names:
        ms_a, ms_b = ra["median_ms"][name], rb["median_ms"][name]
        row = {"stage": name.removesuffix("/trainer").removeprefix("s"), f"{a} img/s": batch / ms_a * 1000,
               f"{b} img/s": batch / ms_b * 1000, "speedup": ms_a / ms_b,
               f"{a} saved MiB": ra["saved_bytes"][name] / MiB, f"{b} saved MiB": rb["saved_bytes"][name] / MiB}
        for label, r in ((a, ra), (b, rb)):
            if r["peak_cuda_bytes"][name] is not None:
                row[f"{label} peak MiB"] = r["peak_cuda_bytes"][name] / MiB
        rows.append(row)
    return rows


def run(cfg: Config, args: argparse.Namespace, device: torch.device) -> tuple[dict, str]:
    """(report entries, printed table) of the precision bench: the step bench once per precision."""
    results = {}
    for label, (precision, channels_last) in PRECISIONS.items():
        variant = replace(cfg, mixed_precision=precision, channels_last=channels_last)
        AcceleratorState._reset_state(reset_partial_state=True)  # one process-wide state per precision
        results[label] = bench_steps(variant, args, device)
    rows = precision_rows(results, cfg.batch_size)
    return {"precision_compare": results, "rows": rows}, markdown(rows)
