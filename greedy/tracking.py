"""Where metrics go: metrics.jsonl in the run directory, and W&B through accelerate's tracker when asked."""

from __future__ import annotations

import json
import netrc
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from greedy.checkpoint import RunDir, record_kind
from greedy.errors import UsageError
from greedy.files import write_bytes
from greedy.schema import Config


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


WANDB_ID_FILE = "wandb_run_id.txt"  # in the run directory: the one W&B run of this training run, across resumes


def tracker_init_kwargs(cfg: Config, run: RunDir, run_id: str) -> dict[str, Any]:
    """W&B run settings: greedy and e2e runs of one --experiment share a group; job_type is the mode; the id is
    the run directory's, so that a --resume reattaches to the same W&B run."""
    return {"wandb": {"name": run.path.name, "group": cfg.experiment, "job_type": cfg.mode, "dir": str(run.path),
                      "id": run_id, "resume": "allow"}}


def wandb_run_id(run: RunDir) -> str:
    """The W&B run id stored in the run directory, made and stored on first use."""
    path = run.path / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    write_bytes(path, run_id + "\n")
    return run_id


# A .wandb file is W&B's local transaction log of one run segment: LevelDB's log format (32 KiB blocks of records,
# each with a 7-byte header: crc32, length, kind) holding protobuf `Record`s, after a 7-byte file header.
_BLOCK, _HEADER = 32768, 7
_FULL, _LAST = 1, 4


def wandb_log_records(path: Path) -> Iterator[Any]:
    """The protobuf Records of a local W&B transaction log (`run-<id>.wandb`); a file cut short (a killed process)
    yields the records before the cut."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, chunks = _HEADER, []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's trailer too small for a header: skip to the next block
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK
            continue
        if pos + 7 + length > len(data):
            return
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(b"".join(chunks))
            except Exception:  # a torn record at the cut: nothing after it is readable
                return
            chunks = []
            yield record


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows (logged dicts) of one local W&B transaction log."""
    rows = []
    for record in wandb_log_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


class Tracker:
    """Logs per-step and per-epoch metrics; only the main process writes.

    metrics.jsonl gets every epoch record at once. W&B gets it once the epoch's resumable state is saved
    (`flush_epochs`), so that no epoch a resume trains again is ever in W&B twice. The W&B run's id lives in the run
    directory: a resumed run reattaches to it and first logs the epoch records of metrics.jsonl that the earlier
    segments' local logs lack (lost with a killed process). Steps are logged as `train/step` and epochs as
    `<stage>/epoch` (W&B's own `_step` only counts log calls), so a resumed run's x axes continue.
    """

    def __init__(self, accelerator: Accelerator, cfg: Config, run: RunDir, say=print):
        self.accelerator = accelerator
        self.run = run
        self.use_wandb = cfg.tracker == "wandb"
        self.say = say
        self.wandb_run = None
        self.step = 0  # optimisation steps so far, over all stages
        self._pending: list[dict[str, Any]] = []
        if self.use_wandb:
            offline_without_credentials()
            holder = [wandb_run_id(run) if accelerator.is_main_process else None]
            run_id = broadcast_object_list(holder)[0]
            config = {**cfg.to_dict(), "run_dir": str(run.path)}
            self._init_wandb(cfg, config, run_id)
            if accelerator.is_main_process:
                self.wandb_run = accelerator.get_tracker("wandb", unwrap=True)
                self.wandb_run.summary["run_dir"] = str(run.path)
                self.wandb_run.define_metric("train/step")
                self.wandb_run.define_metric("train/*", step_metric="train/step")

    def _init_wandb(self, cfg: Config, config: dict[str, Any], run_id: str, wait_s: float = 120.0) -> None:
        """accelerate's W&B tracker on this run's id. After a SIGKILL the killed process's W&B service can hold the
        id for a while ("run ID ... is in use"): wait for it to let go, then say so on one line."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.accelerator.init_trackers(cfg.wandb_project, config=config,
                                               init_kwargs=tracker_init_kwargs(cfg, self.run, run_id))
                return
            except Exception as err:  # wandb raises its own ServerResponseError
                self.accelerator.trackers = []  # init_trackers appends before it starts: drop the failed one
                if "in use" not in str(err):
                    raise
                if time.monotonic() > deadline:
                    raise UsageError(f"W&B run {run_id} of {self.run.path} is still in use by another process (the "
                                     "interrupted run's wandb-core?); end it and resume again") from None
                time.sleep(1.0)

    def replay(self, records: list[dict[str, Any]]) -> int:
        """Log to W&B the epoch (and probe) records whose epoch no earlier segment of this W&B run holds; how many
        were logged."""
        if self.wandb_run is None:
            return 0
        this = Path(self.wandb_run.dir).parent
        logged = set()
        for log in self.run.path.glob(f"wandb/*run-*-{self.wandb_run.id}/run-{self.wandb_run.id}.wandb"):
            if log.parent != this:
                logged.update((key.rsplit("/", 1)[0], row[key]) for row in wandb_history(log)
                              for key in row if key.endswith("/epoch"))
        missing = [r for r in records if (r["stage_name"], r["epoch"]) not in logged]
        for record in missing:
            self.begin_stage(record["stage_name"])
            self._log_wandb(record)
        return len(missing)

    def begin_stage(self, name: str) -> None:
        """Each stage plots against its own epoch axis."""
        if self.wandb_run is not None:
            self.wandb_run.define_metric(f"{name}/epoch")
            self.wandb_run.define_metric(f"{name}/*", step_metric=f"{name}/epoch")
            self.wandb_run.define_metric(f"probe/{name}/*", step_metric=f"{name}/epoch")

    def log_step(self, values: dict[str, float], step: int) -> None:
        if self.use_wandb:
            self.accelerator.log({**values, "train/step": step})

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        """Write the record to metrics.jsonl now; W&B gets it at the next `flush_epochs`."""
        if self.accelerator.is_main_process:
            self.run.log(record)
        if self.use_wandb:
            self._pending.append({**record, "step": step})

    def log_probe(self, record: dict[str, Any]) -> None:
        """A probe record (greedy.analysis.during): to metrics.jsonl now, to W&B with its epoch's records."""
        self.log_epoch(record, self.step)

    def flush_epochs(self) -> None:
        """Log the epoch (and probe) records held back until their resumable state was saved."""
        for record in self._pending:
            self._log_wandb(record)
        self._pending = []

    def _log_wandb(self, record: dict[str, Any]) -> None:
        """An epoch record under `<stage>/...`; a probe record under `probe/<stage>/<layer>/...`, both plotted
        against the stage's epoch axis."""
        if not self.use_wandb:
            return
        name = record["stage_name"]
        if record_kind(record) == "probe":
            skip = ("kind", "stage", "stage_name", "epoch", "layer", "step", "held_out")
            values = {f"probe/{name}/{record['layer']}/{k}": v for k, v in record.items() if k not in skip}
            self.accelerator.log({**values, f"{name}/epoch": record["epoch"]})
        else:
            self.accelerator.log({f"{name}/{k}": v for k, v in record.items() if k != "stage_name"})

    def log_summary(self, rows: list[dict[str, Any]], final: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        import wandb

        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self.wandb_run.log({"summary_table": table})
        for key, value in final.items():
            self.wandb_run.summary[key] = value

    def finish(self, exit_code: int = 0, interrupted: bool = False) -> None:
        """End the W&B run (marked failed with a non-zero exit code) and say where an offline one is.

        interrupted: a signal stopped the run (exit code 130 or 143): the run's summary gets `interrupted: true`
        and W&B is told the run is preempted (`mark_preempting`), so the resume that follows continues it."""
        if self.wandb_run is not None and interrupted:
            self.wandb_run.summary["interrupted"] = True
            self.wandb_run.summary["exit_code"] = exit_code
            self.wandb_run.mark_preempting()
        if self.wandb_run is not None and exit_code:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None
        if self.wandb_run is not None and os.environ.get("WANDB_MODE") == "offline":
            self.say(f"W&B run saved offline in {self.wandb_run.dir.rsplit('/files', 1)[0]}; "
                     f"upload it with `wandb sync {self.wandb_run.dir.rsplit('/files', 1)[0]}`")
        if not exit_code:  # a stopped run's peers may be gone: no barrier
            self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
