"""Pipelined decoupled training (greedy/pipeline.py): processes launched as torchrun launches them (RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment, gloo on CPU), one thread each."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train
from greedy.config import build_config, load_yaml
from greedy.errors import PipelineLost, UsageError
from greedy.models import check_shapes
from greedy.pipeline import Pipeline, Placement, balanced_split
from tests.helpers import ROOT, free_port, same_weights, user_env

TINY = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "3",
        "--batch-size", "64", "--no-progress", "--mode", "decoupled"]
TIMING = {"time", "step_time"}  # the only fields of a metrics record allowed to differ

pytestmark = pytest.mark.usefixtures("one_thread")


def launch(n: int, *args: str, logs: Path) -> list[subprocess.Popen]:
    """n ranks of `python train.py args`, each with its log file logs/rankR.log."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(n):
        env = user_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = (logs / f"rank{rank}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT, env=env))
    return procs


def finish(procs: list[subprocess.Popen], logs: Path, timeout: float = 120) -> None:
    codes = [p.wait(timeout) for p in procs]
    assert codes == [0] * len(procs), "\n".join((logs / f"rank{r}.log").read_text() for r in range(len(procs)))


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A sequential decoupled run in this process (one thread) and the same run pipelined over 2 processes."""
    out = tmp_path_factory.mktemp("pipeline")
    procs = launch(2, *TINY, "--pipeline", "2", "--out-dir", str(out), "--name", "pipe", logs=out / "logs")
    assert train.main([*TINY, "--out-dir", str(out), "--name", "seq"]) == 0  # meanwhile
    finish(procs, out / "logs")
    return out


@pytest.mark.training
def test_two_processes_are_bit_identical_to_the_sequential_run(runs):
    seq, pipe = runs / "seq", runs / "pipe"
    assert same_weights(seq, pipe)
    assert metrics(seq) == metrics(pipe)  # every block's loss, train and test accuracy, every epoch
    s, p = (json.loads((r / "summary.json").read_text()) for r in (seq, pipe))
    assert s["stage_test_acc"] == p["stage_test_acc"] and min(p["stage_test_acc"]) > 0.7
    log = (runs / "logs" / "rank0.log").read_text()
    assert "pipeline: 2 groups x 1 replica(s) = 2 processes; balanced, share of the step FLOPs" in log
    assert "group 1 = blocks 1-2 (" in log and "group 2 = block 3 (" in log
    assert [(f["group"], f["blocks"]) for f in p["pipeline"]] == [(1, [1, 2]), (2, [3])]
    assert all(0 < f["busy_fraction"] <= 1 and f["block_bytes"] > 0 for f in p["pipeline"])
    assert not any(path.name.startswith("state-") for path in pipe.iterdir())


@pytest.mark.training
@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_stops_the_other_and_resume_is_bit_identical(runs, tmp_path, victim):
    procs = launch(2, *TINY, "--pipeline", "2", "--pipeline-timeout", "20", "--out-dir", str(tmp_path), "--name",
                   "killed", logs=tmp_path / "logs")
    run = tmp_path / "killed"
    deadline, log0 = time.time() + 120, tmp_path / "logs" / "rank0.log"
    while not (run / "state-s2-e0" / "COMPLETE").exists():  # killed in epoch 2, epoch 1's state saved
        assert time.time() < deadline and all(p.poll() is None for p in procs), log0.read_text()
        time.sleep(0.01)
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    assert survivor.wait(120) == 4  # stops on its own (--pipeline-timeout 20) instead of hanging: else TimeoutExpired
    lines = (tmp_path / "logs" / f"rank{1 - victim}.log").read_text().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: pipeline process {victim} (group {victim + 1}) was lost")
    assert errors[0].endswith(f"resume with --resume {run}")
    states = [p.name for p in run.iterdir() if p.name.startswith("state-")]
    assert states in (["state-s2-e0"], ["state-s2-e1"])
    finish(launch(2, "--resume", str(run), logs=tmp_path / "resume"), tmp_path / "resume")
    assert "resuming decoupled at epoch" in (tmp_path / "resume" / "rank0.log").read_text()
    assert same_weights(run, runs / "pipe")
    assert metrics(run) == metrics(runs / "pipe")


@pytest.mark.training
def test_sigterm_to_every_process_stops_the_pipeline_in_one_line_and_resume_is_bit_identical(runs, tmp_path):
    """SIGTERM to both processes, as a launcher or Slurm sends it: both exit 143, one line (rank 0's)."""
    procs = launch(2, *TINY, "--pipeline", "2", "--out-dir", str(tmp_path), "--name", "stopped",
                   logs=tmp_path / "logs")
    run, deadline = tmp_path / "stopped", time.time() + 120
    while not (run / "state-s2-e0" / "COMPLETE").exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(120) for proc in procs] == [143, 143]
    lines = [line for rank in (0, 1) for line in (tmp_path / "logs" / f"rank{rank}.log").read_text().splitlines()
             if line.startswith(("interrupted", "error", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted in decoupled training, epoch "), lines
    assert lines[0].endswith(f"the last complete epoch is saved: python train.py --resume {run}")
    finish(launch(2, "--resume", str(run), logs=tmp_path / "resume"), tmp_path / "resume")
    assert same_weights(run, runs / "pipe")
    assert metrics(run) == metrics(runs / "pipe")


@pytest.mark.training
def test_two_groups_of_two_replicas_keep_each_groups_replicas_equal(tmp_path):
    args = ["-c", "configs/digits_k2.yaml", "--widths", "8,8", "--downsample", "2", "--epochs", "2",
            "--batch-size", "32", "--no-progress", "--mode", "decoupled", "--pipeline", "2"]
    procs = launch(4, *args, "--out-dir", str(tmp_path), "--name", "pxd", logs=tmp_path / "logs")
    finish(procs, tmp_path / "logs", timeout=240)
    summary = json.loads((tmp_path / "pxd" / "summary.json").read_text())
    figures = summary["pipeline"]
    assert [(f["rank"], f["group"], f["replica"], f["blocks"]) for f in figures] == [
        (0, 1, 0, [1]), (1, 1, 1, [1]), (2, 2, 0, [2]), (3, 2, 1, [2])]
    assert figures[0]["weights_digest"] == figures[1]["weights_digest"]  # averaged within group 1 only
    assert figures[2]["weights_digest"] == figures[3]["weights_digest"]
    assert len(set(summary["rank_weight_digests"])) == 1  # the assembled net, on every process
    assert min(summary["stage_test_acc"]) > 0.5  # chance is 0.1
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "global batch: 32 per process x 2 replicas x 1 accumulation steps = 64" in log


def test_balanced_split_minimizes_the_costliest_group():
    assert balanced_split([1, 1, 1, 1], 2) == [2, 2]
    assert balanced_split([4, 1, 1, 1, 1], 2) == [1, 4]
    assert balanced_split([1, 2, 3, 4, 5], 3) == [3, 1, 1]  # 6 | 4 | 5 is the best worst group (6)
    assert balanced_split([5, 1], 2) == [1, 1]


def test_processes_must_be_a_multiple_of_the_groups():
    cfg = build_config({**load_yaml("configs/digits_k2.yaml"), "mode": "decoupled", "pipeline": 2})
    three = SimpleNamespace(num_processes=3, process_index=0, device=torch.device("cpu"))
    with pytest.raises(UsageError) as err:
        Pipeline(cfg, three, check_shapes(cfg, 1, 8), 1, 8)
    assert str(err.value) == ("--pipeline 2: 3 process(es) are not a multiple of 2 groups; launch 2 x D processes "
                              "(e.g. --num_processes 2)")


def test_only_communication_failures_become_a_lost_process():
    cfg = build_config({**load_yaml("configs/digits_k2.yaml"), "mode": "decoupled", "pipeline": 2})
    two = SimpleNamespace(num_processes=2, process_index=1, device=torch.device("cpu"))
    pipe = Pipeline(cfg, two, check_shapes(cfg, 1, 8), 1, 8)
    with pytest.raises(PipelineLost) as err, pipe.talking_to(0, "receiving a batch"):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1. This is ...")
    assert str(err.value) == ("pipeline process 0 (group 1) was lost while receiving a batch (Connection closed by "
                              "peer [127.0.0.1]:1); process 1 stops; the last complete epoch's state is kept: resume "
                              "with --resume RUN_DIR")
    with pytest.raises(RuntimeError, match="^shape mismatch$"), pipe.talking_to(0, "receiving a batch"):
        raise RuntimeError("shape mismatch")  # a bug or out of memory is not a lost peer


def test_placement_of_two_groups_of_two_replicas():
    ranks = [Placement((3, 1), 2, rank) for rank in range(4)]
    assert [(p.group, p.replica, list(p.blocks())) for p in ranks] == [
        (0, 0, [0, 1, 2]), (0, 1, [0, 1, 2]), (1, 0, [3]), (1, 1, [3])]
    assert [ranks[1].rank_of(1), ranks[2].rank_of(0), ranks[3].rank_of(1, 0)] == [3, 0, 2]  # replica d talks to d
    assert ranks[0].describe([1, 1, 1, 3], explicit=True) == (
        "pipeline: 2 groups x 2 replica(s) = 4 processes; pipeline_split, share of the step FLOPs (block + auxiliary "
        "net, stem in group 1): group 1 = blocks 1-3 (50.0%), group 2 = block 4 (50.0%)")
