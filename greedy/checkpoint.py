"""The run directory: config, metrics, per-stage weights, resumable training state. One format."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import load as accelerate_load  # torch.load with weights_only=True
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from greedy.config import build_config, load_yaml, save_config
from greedy.errors import TrainingDiverged, UsageError
from greedy.files import append_text, atomic_write, share_like_umask, writing
from greedy.schema import Config

STATE_DIR = re.compile(r"^state-s(\d+)-e(\d+)$")
SKIPPED_IMAGES = "skipped_images.txt"  # unreadable images skipped so far, one path a line (image folders)
COMPLETE = "COMPLETE"  # written last into a state directory; its absence means an interrupted write


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so that json.dumps writes strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """Strict JSON (RFC 8259): non-finite floats become null, never NaN or Infinity."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise TrainingDiverged naming the first tensor of `state` holding a NaN or an infinity."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(f"{what}: {name} holds NaN or infinite values; not saved (lower --lr and "
                                   "start a new run)")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file, turning any corruption into a one-line UsageError that names the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UsageError(
            f"checkpoint {path} is corrupt or truncated ({err}); retrain that stage or restore the file"
        ) from None


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool = True) -> None:
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UsageError(f"checkpoint {path} does not fit this model ({first})") from None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and exact values: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record_kind(record: dict[str, Any]) -> str:
    """What a metrics.jsonl record is: "epoch" (no "kind" key: the format since the first release) or its "kind"."""
    return record.get("kind", "epoch")


class RunDir:
    """runs/<name>/: config.yaml, metrics.jsonl, stageN.safetensors, model.safetensors, state-sS-eE/."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # creation and opening
    @staticmethod
    def new_path(cfg: Config, default_name: str) -> Path:
        """Where a new run goes, checked without writing anything: it must not exist, and --out-dir must be a
        folder this process can create files in (or one it can create). Raises UsageError."""
        name = cfg.name or f"{default_name}-{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(cfg.out_dir) / name
        if path.exists():
            raise UsageError(f"run directory {path} already exists; pick another --name or --resume {path}")
        out = Path(cfg.out_dir)
        existing = out
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"--out-dir {out}: {existing} is a file, not a folder; pass a folder for run directories")
        try:  # a real probe: os.access says yes to root even on read-only file systems such as /proc
            os.rmdir(tempfile.mkdtemp(prefix=".greedy-probe-", dir=existing))
        except OSError as err:
            raise UsageError(f"--out-dir {out}: cannot create folders in {existing} ({err.strerror}); pass a "
                             "writable --out-dir") from None
        return path

    @classmethod
    def create(cls, cfg: Config, default_name: str) -> RunDir:
        """Make the run directory and save the resolved config in it; raises UsageError if it cannot."""
        path = cls.new_path(cfg, default_name)
        try:
            path.mkdir(parents=True)
        except OSError as err:
            raise UsageError(f"cannot create run directory {path} ({err.strerror}); pass a writable --out-dir") \
                from None
        run = cls(path)
        try:
            atomic_write(run.config_path, lambda p: save_config(cfg, p))
        except BaseException:  # a folder without its config is no run: leave nothing, so a retry can start it
            shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise UsageError(f"{path} is not a run directory (no config.yaml); pass a directory made by train.py")
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def finished(self) -> bool:
        """Training wrote its final model and summary: a --resume has nothing left to do."""
        return (self.path / "summary.json").is_file() and (self.path / "model.safetensors").is_file()

    def load_config(self) -> Config:
        return build_config(load_yaml(self.config_path), check_data=False)  # data_dir may be overridden

    # metrics
    def log(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (a failed append leaves no half line; raises WriteFailed)."""
        append_text(self.metrics_path, dumps(record) + "\n")

    def stage_seconds(self) -> dict[int, float]:
        """Wall time of each (0-based) stage, from its last metrics record."""
        return {r["stage"] - 1: r["time"] for r in self.read_metrics()}

    def cache_seconds(self) -> float:
        """Seconds spent building feature caches, all stages (already included in their times)."""
        last = {r["stage"]: r.get("cache_time", 0.0) for r in self.read_metrics()}
        return sum(last.values())

    def read_metrics(self, kind: str | None = "epoch") -> list[dict[str, Any]]:
        """The records of one kind, in file order: "epoch" (the default: one per epoch per stage, no "kind" key),
        "probe" (greedy.analysis.during: one per probed layer), or None for all; stage and epoch are 1-based, as
        printed."""
        if not self.metrics_path.exists():
            return []
        text = self.metrics_path.read_text()
        lines = text.split("\n")[:-1]  # a last line without its newline was cut by a kill: its epoch is retrained
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{self.metrics_path} line {number} is not JSON; restore the file or start a new "
                                 "run") from None
        return [r for r in records if kind is None or record_kind(r) == kind]

    def metrics_until(self, state: tuple[int, int] | None, by_epoch: bool = False,
                      kind: str | None = "epoch") -> list[dict[str, Any]]:
        """The records (of `kind`, as read_metrics) up to a resumable state's (0-based stage, epoch); all of them
        without one.

        by_epoch: the run trains all its blocks in each epoch (decoupled), so keep every block's records up to epoch.
        """
        if state is None:
            return self.read_metrics(kind)
        stage, epoch = state
        last = (epoch + 1,) if by_epoch else (stage + 1, epoch + 1)
        return [r for r in self.read_metrics(kind)
                if ((r["epoch"],) if by_epoch else (r["stage"], r["epoch"])) <= last]

    def truncate_metrics(self, stage: int, epoch: int, by_epoch: bool = False) -> None:
        """Drop records of every kind written after the state we resume from (0-based stage, epoch), so none is
        duplicated."""
        keep = self.metrics_until((stage, epoch), by_epoch, kind=None)
        atomic_write(self.metrics_path, lambda p: p.write_text("".join(dumps(r) + "\n" for r in keep)))

    def drop_stage_metrics(self, stage: int, by_epoch: bool = False) -> None:
        """Drop the records of a stage (0-based) that starts from scratch, and of everything after it: a run
        stopped before the stage's first state was saved may have logged its first epoch already."""
        if not self.metrics_path.exists():
            return
        if by_epoch:  # decoupled: one joint stage, every record of it
            self.truncate_metrics(stage, -1, by_epoch=True)
        else:
            self.truncate_metrics(stage - 1, 1 << 30)

    # weights of finished stages and of the final model
    def stage_weights_path(self, name: str) -> Path:
        return self.path / f"{name}.safetensors"

    def save_weights(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """Write a weights file atomically; raises TrainingDiverged (writing nothing) if a tensor is not finite."""
        check_finite(state, str(path))
        atomic_write(path, lambda p: save_file(state, str(p)))

    def save_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / "summary.json", lambda p: p.write_text(dumps(summary, indent=2)))

    def read_summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # resumable training state (accelerate's save_state), one per (stage, epoch), written atomically
    def state_dirs(self) -> list[tuple[int, int, Path]]:
        found = []
        for p in self.path.iterdir():
            m = STATE_DIR.match(p.name)
            if m and p.is_dir():
                found.append((int(m[1]), int(m[2]), p))
        return sorted(found)

    def latest_state(self) -> tuple[int, int, Path] | None:
        """The newest complete state, or None; an incomplete newest one is a corrupt checkpoint."""
        states = self.state_dirs()
        if not states:
            return None
        stage, epoch, path = states[-1]
        if not (path / COMPLETE).exists():
            raise UsageError(f"checkpoint {path} is incomplete (no {COMPLETE} marker); delete it to resume "
                             "from the previous epoch")
        return stage, epoch, path

    def save_state(self, accelerator, stage: int, epoch: int, extra: dict[str, Any],
                   save_rank: Callable[[Path], None] | None = None) -> None:
        """accelerate.save_state into a temporary directory, renamed into place once complete.

        `save_rank(folder)`, when given, replaces accelerate's save_state: every process writes its own files
        (`rank_files`) into the folder (pipelined training: each process holds different blocks)."""
        final = self.path / f"state-s{stage}-e{epoch}"
        tmp = self.path / f".tmp-state-s{stage}-e{epoch}"
        try:
            with writing(final):
                if accelerator.is_main_process:
                    if tmp.exists():
                        shutil.rmtree(tmp)
                    tmp.mkdir()
                accelerator.wait_for_everyone()
                if save_rank is not None:
                    save_rank(tmp)
                else:
                    accelerator.save_state(str(tmp), safe_serialization=True)
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    (tmp / "progress.json").write_text(dumps({"stage": stage, "epoch": epoch, **extra}))
                    for file in tmp.rglob("*"):
                        if file.is_file():
                            share_like_umask(file)
                    (tmp / COMPLETE).write_text("")
                    os.replace(tmp, final)
        except BaseException:  # the previous epoch's state stays the newest complete one
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if accelerator.is_main_process:
            for s, e, path in self.state_dirs():
                if (s, e) != (stage, epoch):
                    shutil.rmtree(path)
        accelerator.wait_for_everyone()

    def verify_state(self, path: Path) -> None:
        """Read every file of a saved state once, so a corrupt one is reported before anything is changed."""
        for file in sorted(path.iterdir()):
            try:
                if file.suffix == ".safetensors":
                    load_file(str(file))
                elif file.suffix in (".bin", ".pkl", ".pt"):
                    accelerate_load(file, map_location="cpu")
                elif file.suffix == ".json":
                    json.loads(file.read_text())
            except Exception as err:  # any failure to read means the same thing to the user
                raise UsageError(f"checkpoint {file} is corrupt or truncated ({type(err).__name__}); delete "
                                 f"{path} to resume from the epoch before") from None

    def load_state(self, accelerator, path: Path) -> dict[str, Any]:
        try:
            accelerator.load_state(str(path))
            return json.loads((path / "progress.json").read_text())
        except (SafetensorError, OSError, RuntimeError, EOFError, ValueError, KeyError) as err:
            raise UsageError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); delete it to resume from the "
                             "stage before") from None

    @staticmethod
    def rank_files(path: Path, rank: int) -> tuple[Path, Path]:
        """A process's own files in a state directory: (weights .safetensors, optimizer and RNG state .pt)."""
        return path / f"rank{rank}.safetensors", path / f"rank{rank}.pt"

    def load_rank_state(self, path: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                                                dict[str, Any]]:
        """(weights, optimizer and RNG state, progress) that process `rank` saved with `save_state(save_rank=...)`;
        raises UsageError for a missing or corrupt file (torch.load with weights_only: tensors and plain data)."""
        weights, other = self.rank_files(path, rank)
        try:
            return (load_file(str(weights)), accelerate_load(other, map_location="cpu"),
                    json.loads((path / "progress.json").read_text()))
        except (SafetensorError, OSError, RuntimeError, EOFError, ValueError, KeyError) as err:
            raise UsageError(f"checkpoint {path} has no readable state of process {rank} ({type(err).__name__}); "
                             "resume with as many processes and --pipeline as the run had, or delete it") from None

    def drop_states(self, accelerator) -> None:
        """A finished stage keeps only its weights."""
        if accelerator.is_main_process:
            for _, _, path in self.state_dirs():
                shutil.rmtree(path)
        accelerator.wait_for_everyone()
