"""Probes during training (greedy/analysis/during.py): records, schedule, no effect on training, resume, plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import evaluate
import train
from greedy import trainer
from greedy.analysis.during import TrainingProbes, probed_layers
from greedy.builder import GreedyBuilder
from greedy.checkpoint import RunDir
from greedy.config import build_config, load_yaml
from greedy.errors import exit_code
from greedy.models import GreedyNet
from greedy.tracking import Tracker
from tests.helpers import TINY, cli
from tests.wandb_log import read_offline_run

# Two epochs a stage, with crop+flip: augmentation draws from torch's global RNG every batch (and turns the feature
# cache off), so a probe that consumed or reset that RNG would change the weights.
ARGS = [*TINY, "--epochs", "2", "--augment", "crop_flip"]
TIMING = ("time", "step_time", "cache_time", "probe_time")  # wall-clock fields: differ between any two runs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny greedy run with probes after every epoch and without probes."""
    out = tmp_path_factory.mktemp("during")
    assert train.main([*ARGS, "--probe-every", "1", "--out-dir", str(out), "--name", "probed"]) == 0
    assert train.main([*ARGS, "--out-dir", str(out), "--name", "plain"]) == 0
    return out


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.training
def test_probe_records_are_present_and_well_formed(runs):
    run = RunDir(runs / "probed")
    probes = run.read_metrics("probe")
    assert [(r["stage"], r["stage_name"], r["epoch"], r["layer"]) for r in probes] == [
        (s, f"stage{s}", e, f"block{s}") for s in (1, 2, 3) for e in (1, 2)]
    for r in probes:
        assert r["kind"] == "probe"
        assert 0.0 <= r["linear_test_acc"] <= 1.0 and 0.0 <= r["linear_train_acc"] <= 1.0
        assert r["linear_test_acc"] > 0.5  # a trained block's output is far above chance (0.1)
        assert r["nc1"] > 0 and r["scatter_ratio"] > 0 and -1 <= r["silhouette"] <= 1
        assert r["mi_xt_n"] == 360 and r["beta"] == 0.5  # all digits test images; the analysis' beta
        assert 0 < r["mi_xt"] <= math.log(360) + 4 * r["mi_xt_stderr"]
        assert r["probe_time"] > 0 and r["held_out"] == "test"  # no val_split: the test subset
    # each probe record follows its epoch's record in the file; epoch records are unchanged (no "kind")
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [(r["stage"], r["epoch"], "kind" in r) for r in lines] == [
        (s, e, probe) for s in (1, 2, 3) for e in (1, 2) for probe in (False, True)]
    assert [(r["stage"], r["epoch"]) for r in run.read_metrics()] == [(s, e) for s in (1, 2, 3) for e in (1, 2)]
    assert set(run.stage_seconds()) == {0, 1, 2}  # readers of epoch records do not see probe records


def test_probe_every_0_writes_none(runs):
    text = (runs / "plain" / "metrics.jsonl").read_text()
    assert len(text.splitlines()) == 6 and '"kind"' not in text
    assert RunDir(runs / "plain").read_metrics("probe") == []


@pytest.mark.training
def test_probes_do_not_change_training(runs):
    probed, plain = load_file(runs / "probed" / "model.safetensors"), load_file(runs / "plain" / "model.safetensors")
    assert probed.keys() == plain.keys()
    for key in plain:
        assert torch.equal(probed[key], plain[key]), key
    assert without_timing(RunDir(runs / "probed").read_metrics()) == without_timing(RunDir(runs / "plain")
                                                                                     .read_metrics())


@pytest.mark.training
def test_resume_keeps_metrics_identical_to_an_uninterrupted_run(runs, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = trainer.evaluate_parts

    def crash_in_stage2_epoch2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_parts", crash_in_stage2_epoch2)
    with pytest.raises(KeyboardInterrupt):
        train.main([*ARGS, "--probe-every", "1", "--out-dir", str(tmp_path), "--name", "killed"])
    monkeypatch.setattr(trainer, "evaluate_parts", real)
    run = RunDir(tmp_path / "killed")
    assert [p.name for p in run.path.iterdir() if p.name.startswith("state-")] == ["state-s1-e0"]
    with run.metrics_path.open("a") as f:  # records written after the last saved state (a kill between the two)
        f.write(json.dumps({"stage": 2, "stage_name": "stage2", "epoch": 2, "time": 0.0}) + "\n")
        f.write(json.dumps({"kind": "probe", "stage": 2, "stage_name": "stage2", "epoch": 2, "layer": "block2",
                            "nc1": 0.0}) + "\n")
    capsys.readouterr()
    assert train.main(["--resume", str(run.path)]) == 0
    assert "resuming stage2 at epoch 2/2" in capsys.readouterr().out
    reference = RunDir(runs / "probed")
    assert without_timing(run.read_metrics(None)) == without_timing(reference.read_metrics(None))
    resumed, uninterrupted = load_file(run.path / "model.safetensors"), load_file(reference.path / "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_evaluate_draws_the_trajectories_with_compare(runs, capsys):
    assert evaluate.main([str(runs / "probed"), "--compare", str(runs / "plain")]) == 0
    out = capsys.readouterr().out
    names = ("during_linear.png", "during_clustering.png", "during_information.png")
    assert f"probes during training: 3 plots in {runs / 'probed' / 'analysis'} ({', '.join(names)})" in out
    for name in names:
        assert (runs / "probed" / "analysis" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (runs / "plain" / "analysis").exists()  # the compared run is only read


def test_compare_without_probes_or_analysis_is_one_line_exit_2(runs, capsys):
    code = exit_code(evaluate.main, [str(runs / "plain"), "--compare", str(runs / "plain")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "without --analysis draws the probes recorded during training and neither run has any" in err


def test_schedule_and_probed_layers():
    cfg = build_config({**load_yaml("configs/digits_k2.yaml"), "probe_every": 2}, check_data=False)
    probes = TrainingProbes(cfg, None, None)
    assert [e + 1 for e in range(5) if probes.due(e, 5)] == [2, 4, 5]  # every 2 epochs, and the stage's last
    assert TrainingProbes.for_run(build_config(load_yaml("configs/digits_k2.yaml"), check_data=False), None,
                                  None) is None
    net = GreedyNet([4, 4, 8], 10, in_chans=1, downsample=[3])
    assert probed_layers(GreedyBuilder(net, "greedy").stage(1), 3) == [(1, "stage2", "block2")]
    assert probed_layers(GreedyBuilder(net, "e2e").stage(0), 3) == [(2, "e2e", f"block{j}") for j in (1, 2, 3)]
    assert probed_layers(GreedyBuilder(net, "decoupled").stage(0), 3) == [(j - 1, f"block{j}", f"block{j}")
                                                                          for j in (1, 2, 3)]


def test_probe_records_go_to_wandb_under_probe_keys_on_the_stage_epoch_axis(tmp_path):
    logged = []

    class Accel:
        is_main_process = True

        def log(self, values):
            logged.append(values)

    cfg = build_config(load_yaml("configs/digits_k2.yaml"), check_data=False)
    run = RunDir(tmp_path)
    tracker = Tracker(Accel(), cfg, run)
    tracker.use_wandb = True  # without starting W&B: what would be logged
    record = {"kind": "probe", "stage": 2, "stage_name": "stage2", "epoch": 3, "layer": "block2", "mi_xt": 4.5,
              "nc1": 0.5, "probe_time": 0.1}
    tracker.log_probe(record)
    assert logged == [] and run.read_metrics("probe") == [record]  # W&B waits for the epoch's saved state
    tracker.flush_epochs()
    assert logged == [{"probe/stage2/block2/mi_xt": 4.5, "probe/stage2/block2/nc1": 0.5,
                       "probe/stage2/block2/probe_time": 0.1, "stage2/epoch": 3}]


def test_offline_wandb_history_holds_the_probes_on_the_stage_epoch_axis(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path)}  # no credentials anywhere
    cli("train.py", *TINY, "--epochs", "2", "--mode", "e2e", "--probe-every", "1", "--probes", "clustering",
        "--wandb", "--out-dir", str(tmp_path), "--name", "run", env=env)
    _, history = read_offline_run(tmp_path / "run")
    logged = [(row["e2e/epoch"], key.split("/")[2], row[key]) for row in history for key in row
              if key.startswith("probe/e2e/") and key.endswith("/nc1")]
    records = RunDir(tmp_path / "run").read_metrics("probe")
    assert logged == [(r["epoch"], r["layer"], r["nc1"]) for r in records]
    assert [(e, layer) for e, layer, _ in logged] == [(e, f"block{j}") for e in (1, 2) for j in (1, 2, 3)]
