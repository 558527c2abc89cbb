"""Where metrics go: metrics.jsonl in the run directory, and W&B through accelerate's tracker when asked."""

from __future__ import annotations

import netrc
import os
from typing import Any

from accelerate import Accelerator

from greedy.checkpoint import RunDir
from greedy.config import Config


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def offline_without_credentials() -> bool:
    """Without W&B credentials run offline rather than prompt, quietly (the caller prints where the run is);
    whether W&B runs offline."""
    if "WANDB_MODE" not in os.environ and not _wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
    offline = os.environ.get("WANDB_MODE") == "offline"
    if offline:
        os.environ.setdefault("WANDB_SILENT", "true")
    return offline


def tracker_init_kwargs(cfg: Config, run: RunDir) -> dict[str, Any]:
    """W&B run settings: greedy and e2e runs of one --experiment share a group; job_type is the mode."""
    return {"wandb": {"name": run.path.name, "group": cfg.experiment, "job_type": cfg.mode, "dir": str(run.path)}}


class Tracker:
    """Logs per-step and per-epoch metrics; only the main process writes."""

    def __init__(self, accelerator: Accelerator, cfg: Config, run: RunDir, say=print):
        self.accelerator = accelerator
        self.run = run
        self.use_wandb = cfg.tracker == "wandb"
        self.say = say
        self.wandb_run = None
        self.step = 0  # optimisation steps so far, over all stages
        if self.use_wandb:
            offline_without_credentials()
            config = {**cfg.to_dict(), "run_dir": str(run.path)}
            accelerator.init_trackers(cfg.wandb_project, config=config, init_kwargs=tracker_init_kwargs(cfg, run))
            if accelerator.is_main_process:
                self.wandb_run = accelerator.get_tracker("wandb", unwrap=True)
                self.wandb_run.summary["run_dir"] = str(run.path)

    def begin_stage(self, name: str) -> None:
        """Each stage plots against its own epoch axis."""
        if self.wandb_run is not None:
            self.wandb_run.define_metric(f"{name}/epoch")
            self.wandb_run.define_metric(f"{name}/*", step_metric=f"{name}/epoch")

    def log_step(self, values: dict[str, float], step: int) -> None:
        if self.use_wandb:
            self.accelerator.log(values, step=step)

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        if self.accelerator.is_main_process:
            self.run.log(record)
        if self.use_wandb:
            name = record["stage_name"]
            self.accelerator.log({f"{name}/{k}": v for k, v in record.items() if k != "stage_name"}, step=step)

    def log_summary(self, rows: list[dict[str, Any]], final: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        import wandb

        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self.wandb_run.log({"summary_table": table})
        for key, value in final.items():
            self.wandb_run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run (marked failed with a non-zero exit code) and say where an offline one is."""
        if self.wandb_run is not None and exit_code:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None
        if self.wandb_run is not None and os.environ.get("WANDB_MODE") == "offline":
            self.say(f"W&B run saved offline in {self.wandb_run.dir.rsplit('/files', 1)[0]}; "
                     f"upload it with `wandb sync {self.wandb_run.dir.rsplit('/files', 1)[0]}`")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
