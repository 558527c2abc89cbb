"""W&B through accelerate's tracker: offline runs, per-stage history, shared experiment group."""

import json
import subprocess
import sys

import pytest

from greedy.tracking import wandb_history
from tests.helpers import ROOT, TINY, cli, kill_during_stage2, start_train
from tests.wandb_log import read_offline_run


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(out)}  # no credentials anywhere
    procs = {mode: cli("train.py", *TINY, "--epochs", "2", "--mode", mode, "--wandb", "--experiment", "cmp",
                       "--log-every", "10", "--out-dir", str(out), "--name", mode, env=env)
             for mode in ("greedy", "e2e")}
    return out, procs


def test_offline_history_holds_every_stage_accuracy(offline_runs):
    out, procs = offline_runs
    run, history = read_offline_run(out / "greedy")
    for stage in ("stage1", "stage2", "stage3"):
        epochs = [row[f"{stage}/epoch"] for row in history if f"{stage}/test_acc" in row]
        assert epochs == [1, 2], stage
    # per-step values every --log-every steps (3 stages x 2 epochs x 23 steps of 64 images)
    steps = [row["train/step"] for row in history if "train/loss" in row and "train/lr" in row]
    assert steps == list(range(10, 139, 10)), steps
    assert "wandb sync" in procs["greedy"].stdout  # one line says where the offline run is


def test_greedy_and_e2e_share_the_experiment_group(offline_runs):
    out, _ = offline_runs
    greedy, _ = read_offline_run(out / "greedy")
    e2e, history = read_offline_run(out / "e2e")
    assert greedy.run_group == e2e.run_group == "cmp"
    assert (greedy.job_type, e2e.job_type) == ("greedy", "e2e")
    assert [row["e2e/epoch"] for row in history if "e2e/test_acc" in row] == [1, 2]


def test_without_wandb_flag_wandb_is_never_imported(tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['train.py', *{TINY!r}, '--epochs', '1', '--out-dir', {str(tmp_path)!r}]\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
        "print('wandb imported:', 'wandb' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "wandb imported: False" in proc.stdout, proc.stdout + proc.stderr


def test_killed_and_resumed_run_is_one_wandb_run_with_every_epoch_once(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    args = ["-c", "configs/digits_k2.yaml", "--epochs", "4", "--no-progress", "--wandb", "--out-dir", str(tmp_path),
            "--name", "run"]
    run = tmp_path / "run"
    kill_during_stage2(start_train(*args, env=env), run)
    cli("train.py", "--resume", str(run), env=env)
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    logs = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(log.name == f"run-{run_id}.wandb" for log in logs)  # two segments, one run
    seen = [(key.split("/")[0], row[key]) for log in logs for row in wandb_history(log) for key in row
            if key.endswith("/epoch")]
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    expected = [(r["stage_name"], r["epoch"]) for r in records]
    assert len(expected) == 12 and sorted(seen) == sorted(expected)  # every epoch of every stage, each once
