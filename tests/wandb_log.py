"""Read an offline W&B run in tests, with greedy's own reader of W&B's local transaction logs."""

from __future__ import annotations

from pathlib import Path

from greedy.tracking import wandb_history, wandb_log_records


def read_offline_run(run_dir: Path):
    """The run record (group, job_type, ...) and the history rows of the one offline run under run_dir."""
    [log] = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    run = next(r.run for r in wandb_log_records(log) if r.WhichOneof("record_type") == "run")
    return run, wandb_history(log)
