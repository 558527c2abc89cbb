"""A run stopped by a failed write or a signal ends in one line and its exit code; --resume ends bit-identical."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest

import train
from greedy import checkpoint
from greedy.errors import WRITE_EXIT, exit_code
from greedy.tracking import wandb_log_records
from tests.helpers import (
    ROOT,
    TINY,
    cli,
    free_port,
    kill_during_stage2,
    load_script,
    same_weights,
    start_train,
    tree_digest,
    user_env,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {"OMP_NUM_THREADS": "1"}  # subprocesses: the same kernels and threads as this process, so runs compare


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, trained in this process (one thread) and in a subprocess (one thread)."""
    out = tmp_path_factory.mktemp("stops")
    assert train.main([*TINY, "--out-dir", str(out), "--name", "ref"]) == 0
    cli("train.py", *TINY, "--out-dir", str(out), "--name", "ref_cli", env=ENV)
    return out


def metrics_without_time(run):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "step_time", "cache_time")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def ends_like(run, ref) -> None:
    """A stopped and resumed run ends bit-identical to the uninterrupted one: the same weights, every metrics
    record the same but for its timings."""
    assert same_weights(run, ref)
    assert metrics_without_time(run) == metrics_without_time(ref)


def fail_at(monkeypatch, module, name, call, err):
    """Make the `call`-th call of module.name raise `err` (an OSError), the others write as usual."""
    real, count = getattr(module, name), [0]

    def writer(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise err
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, writer)


# Each OS error at another kind of write: an epoch's state folder, a metrics record, a finished stage's weights,
# the summary, the final model; each writer first leaves part of its file, as a full disk does.
CASES = [
    ("ENOSPC", "state", "No space left on device; free space"),
    ("EFBIG", "metrics", "File too large; raise the file-size limit (ulimit -f) or free space"),
    ("EROFS", "weights", "Read-only file system; make the file system writable"),
    ("EACCES", "summary", "Permission denied; make it writable for you"),
    ("EIO", "model", "Input/output error; check the disk"),
]


@pytest.mark.parametrize("name, site, advice", CASES)
def test_a_failed_write_ends_in_one_line_and_resume_ends_bit_identical(reference, tmp_path, monkeypatch, capsys,
                                                                       name, site, advice):
    code = getattr(errno, name)
    err = OSError(code, os.strerror(code))
    if site == "state":  # the 5th epoch's state: stage 2, epoch 2
        fail_at(monkeypatch, accelerate.Accelerator, "save_state", 5, err)
    elif site == "metrics":  # the 4th record (stage 2, epoch 1) fails after writing half of its line
        real_open, count = Path.open, [0]

        class HalfWrite:
            def __init__(self, f):
                self.f = f

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, text):
                self.f.write(text[:len(text) // 2])
                self.f.flush()
                raise err

        def open_(self, mode="r", *args, **kwargs):
            f = real_open(self, mode, *args, **kwargs)
            if self.name == "metrics.jsonl" and mode == "a":
                count[0] += 1
                if count[0] == 4:
                    return HalfWrite(f)
            return f
        monkeypatch.setattr(Path, "open", open_)
    elif site == "summary":  # summary.json's text is half written, then the disk refuses
        real_write_text = Path.write_text

        def write_text(self, text, *args, **kwargs):
            if "summary.json" in self.name:
                real_write_text(self, text[:len(text) // 2])
                raise err
            return real_write_text(self, text, *args, **kwargs)
        monkeypatch.setattr(Path, "write_text", write_text)
    else:  # safetensors writes part of stage2.safetensors / model.safetensors, then the disk refuses
        target, real_save = {"weights": "stage2", "model": "model"}[site], checkpoint.save_file

        def save_file(state, filename, *args, **kwargs):
            if Path(filename).name.startswith(f".{target}.safetensors"):
                Path(filename).write_bytes(b"\0" * 100)
                raise err
            return real_save(state, filename, *args, **kwargs)
        monkeypatch.setattr(checkpoint, "save_file", save_file)
    run = tmp_path / "run"
    assert exit_code(train.main, [*TINY, "--out-dir", str(tmp_path), "--name", "run"]) == WRITE_EXIT
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"error: could not write {re.escape(str(run))}/\S+: {re.escape(advice)} and run python "
                        rf"train\.py --resume {re.escape(str(run))}", line), line
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no partial file left
    if site == "summary":
        assert not (run / "summary.json").exists()
    if site == "metrics":
        assert (run / "metrics.jsonl").read_text().endswith("}\n")  # the half line was cut off again
    monkeypatch.undo()
    assert train.main(["--resume", str(run)]) == 0
    ends_like(run, reference / "ref")


def test_a_real_file_size_limit_ends_in_one_line_and_resume_ends_bit_identical(reference, tmp_path):
    """`ulimit -f 16` (16 KiB) with SIGXFSZ ignored, as on a full disk: the first epoch's state cannot be written."""
    run = tmp_path / "run"
    script = f'ulimit -f 16; trap "" XFSZ; exec "{sys.executable}" train.py "$@"'
    proc = subprocess.run(["bash", "-c", script, "bash", *TINY, "--out-dir", str(tmp_path), "--name", "run"],
                          cwd=ROOT, capture_output=True, text=True, env=user_env(**ENV))
    assert proc.returncode == WRITE_EXIT, proc.stderr
    assert proc.stderr == (f"error: could not write {run}/state-s0-e0: File too large (the file-size limit is 16384 "
                           f"bytes); raise the file-size limit (ulimit -f) or free space and run python train.py "
                           f"--resume {run}\n")
    assert not [p.name for p in run.iterdir() if p.name.startswith((".tmp", "state-"))]  # no partial state left
    cli("train.py", "--resume", str(run), env=ENV)
    ends_like(run, reference / "ref_cli")


def test_a_failed_config_write_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    fail_at(monkeypatch, checkpoint, "save_config", 1, OSError(errno.ENOSPC, "No space left on device"))
    assert exit_code(train.main, [*TINY, "--out-dir", str(tmp_path), "--name", "run"]) == WRITE_EXIT
    assert capsys.readouterr().err == (f"error: could not write {tmp_path}/run/config.yaml: No space left on device; "
                                       "free space and run the command again\n")
    assert not (tmp_path / "run").exists()  # so that running the command again starts it


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_in_one_line_and_resume_ends_bit_identical(reference, tmp_path, sig, code):
    run = tmp_path / "run"
    wandb = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    proc = start_train(*TINY, "--epochs", "3", "--out-dir", str(tmp_path), "--name", "run", "--wandb",
                       env={**ENV, **wandb})
    kill_during_stage2(proc, run, min_epoch=1, sig=sig)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == code, stderr
    assert re.fullmatch(rf"interrupted in stage [23], epoch [1-3]; the last complete epoch is saved: python "
                        rf"train\.py --resume {re.escape(str(run))}\n", stderr), stderr
    [log] = run.glob("wandb/offline-run-*/run-*.wandb")  # the W&B run is marked interrupted, with the exit code
    summary = {i.key: json.loads(i.value_json) for r in wandb_log_records(log) if r.WhichOneof("record_type") ==
               "summary" for i in r.summary.update}
    assert summary["interrupted"] is True and summary["exit_code"] == code
    cli("train.py", "--resume", str(run), env={**ENV, **wandb})
    ends_like(run, reference / "ref_cli")


def fake_slurm(bin_dir: Path) -> Path:
    """`srun` that runs its command here (one task, node 0) and `scontrol` that answers `show hostnames` and records
    `requeue JOB` in bin_dir/requeued: enough of Slurm to run scripts/launch_slurm.sh on this machine."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                  'SLURM_NODEID=0 exec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\nif [ "$1" = show ]; then echo 127.0.0.1; else '
                                      f'echo "$@" >> {bin_dir}/requeued; fi\n')
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_slurm_time_limit_stops_every_process_in_one_line_requeues_and_resumes(tmp_path):
    """Slurm's early warning (USR1 to the batch script) reaches both train.py processes as SIGTERM: one line, the
    job requeued; the requeued job resumes the run and finishes it."""
    bin_dir = fake_slurm(tmp_path / "bin")
    env = user_env(PATH=f"{bin_dir}:{user_env()['PATH']}", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
                   GPUS_PER_NODE="2", MIXED_PRECISION="no", PY=sys.executable, MASTER_PORT=str(free_port()),
                   SLURM_JOB_ID="4242", SLURM_JOB_NAME="job", SLURM_NNODES="1", SLURM_JOB_NODELIST="node1")
    args = ["configs/digits_k2.yaml", "--epochs", "4", "--no-progress", "--out-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(["bash", "scripts/launch_slurm.sh", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    run = tmp_path / "runs" / "job-4242"  # named by the script from the job, so that the requeued job finds it
    kill_during_stage2(proc, run, min_epoch=1, sig=signal.SIGUSR1)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr
    assert (bin_dir / "requeued").read_text() == "requeue 4242\n"
    lines = [line for line in stderr.splitlines() if line.startswith(("interrupted", "error", "Traceback"))]
    expected = r"interrupted in stage [23], epoch [1-4]; the last complete epoch is saved: python train\.py --resume "
    assert len(lines) == 1 and re.fullmatch(expected + re.escape(str(run)), lines[0]), stderr
    requeued = subprocess.run(["bash", "scripts/launch_slurm.sh", *args], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "SLURM_RESTART_COUNT": "1", "MASTER_PORT": str(free_port())})
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith(f"run directory: {run}\n")  # the same run, resumed (not a new one)
    records = [(r["stage"], r["epoch"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert records == [(s, e) for s in (1, 2, 3) for e in (1, 2, 3, 4)]  # every epoch once: none lost, none twice
    assert json.loads((run / "summary.json").read_text())["num_processes"] == 2


def test_a_full_disk_for_the_memory_mapped_cache_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """The cache file's space is reserved before it is mapped: a full disk fails there (not as a SIGBUS later)."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    args = [*TINY, "--cache", "on", "--cache-budget-gb", "0", "--out-dir", str(tmp_path), "--name", "run"]
    assert exit_code(train.main, args) == WRITE_EXIT
    run = tmp_path / "run"
    assert capsys.readouterr().err == (f"error: could not write {run}/.cache-r0-s0-train.bin: No space left on device; "
                                       f"free space and run python train.py --resume {run}\n")
    assert not list(run.glob(".cache-*"))  # the unmapped file is removed


def test_a_failed_table_write_of_compare_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """compare.py's report files go through the same atomic writer: one line, exit 5, no partial table."""
    from greedy import files

    script = load_script("compare")
    real = files.atomic_write

    def read_only(tmp):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def refuse_tables(path, write):
        return real(path, read_only if Path(path).suffix in (".csv", ".md") else write)
    monkeypatch.setattr(files, "atomic_write", refuse_tables)
    args = ["-c", "configs/digits_k2.yaml", "--modes", "greedy", "--k", "1", "--seeds", "0", "--experiment", "t",
            "--out-dir", str(tmp_path), "--", "--widths", "8,8,16", "--downsample", "3", "--epochs", "1"]
    assert exit_code(script.main, args) == WRITE_EXIT
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: could not write {tmp_path}/t/comparison.") and "Read-only file system" in line
    assert not list((tmp_path / "t").glob("comparison.*")) and not list((tmp_path / "t").glob(".*.tmp*"))


def test_a_failed_analysis_write_ends_in_one_line_and_keeps_the_run(reference, tmp_path, monkeypatch, capsys):
    """evaluate.py --analysis writes analysis.json through the atomic writer: one line, exit 5, the run untouched."""
    import evaluate
    from greedy import files

    run = tmp_path / "run"
    shutil.copytree(reference / "ref", run)
    before = tree_digest(run)
    real = files.atomic_write

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files, "atomic_write", lambda path, write: real(path, full if path.suffix == ".json" else
                                                                           write))
    assert exit_code(evaluate.main, [str(run), "--analysis", "linear", "--analysis-samples", "100"]) == WRITE_EXIT
    line = capsys.readouterr().err
    assert line == (f"error: could not write {run}/analysis.json: No space left on device; free space and run the "
                    "command again\n")
    assert tree_digest(run) == before  # no analysis.json, no partial file, nothing else touched
