"""A non-finite loss stops the run at once: exit 3, nothing non-finite saved, strict JSON, the last good state kept."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import train
from greedy import trainer
from greedy.errors import exit_code
from tests.helpers import TINY, cli

STEPS = 23  # TINY: 1,437 digits in batches of 64


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (RFC 8259)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def saved_tensors(run):
    return [t for f in run.rglob("*.safetensors") for t in load_file(str(f)).values() if t.is_floating_point()]


@pytest.mark.training
def test_a_real_divergence_stops_the_cli_and_resume_with_another_lr_is_refused(tmp_path):
    proc = cli("train.py", *TINY, "--lr", "1e6", "--out-dir", str(tmp_path), "--name", "run", check=False)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: stage1 diverged: the loss became non-finite at epoch 1, step ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    run = tmp_path / "run"
    assert not saved_tensors(run) and not (run / "summary.json").exists()  # nothing finished, nothing written
    resume = cli("train.py", "--resume", str(run), "--lr", "0.05", check=False)
    assert resume.returncode == 2
    assert resume.stderr == (f"error: --resume {run}: --lr 0.05 contradicts the saved config (lr: 1000000.0); drop "
                             "the override or start a new run\n")
    cli("train.py", *TINY, "--lr", "0.05", "--out-dir", str(tmp_path), "--name", "fresh")
    assert strict_json((tmp_path / "fresh" / "summary.json").read_text())["final_test_acc"] > 0.5


@pytest.fixture(scope="module")
def nan_in_stage2(tmp_path_factory):
    """An in-process run whose loss turns NaN at stage 2, epoch 2, step 5 (fault injection: deterministic)."""
    out = tmp_path_factory.mktemp("nan")
    real, calls = trainer.F.cross_entropy, {"n": 0}
    bad_call = 3 * STEPS + STEPS + 5  # stage 1's 3 epochs, stage 2's first, then step 5

    def cross_entropy(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == bad_call else loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.F, "cross_entropy", cross_entropy)
        code = exit_code(train.main, [*TINY, "--out-dir", str(out), "--name", "run"])
    return out / "run", code


def test_stops_at_the_first_non_finite_loss_naming_stage_epoch_step(nan_in_stage2, capsys):
    run, code = nan_in_stage2
    assert code == 3
    metrics = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # every finished epoch is recorded, the diverged one is not: the run stopped inside it
    assert [(r["stage"], r["epoch"]) for r in metrics] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert all(math.isfinite(r["loss"]) for r in metrics)


def test_keeps_finished_stages_and_the_last_good_state_all_finite(nan_in_stage2):
    run, _ = nan_in_stage2
    assert not (run / "summary.json").exists() and not (run / "model.safetensors").exists()
    assert (run / "stage1.safetensors").exists() and not (run / "stage2.safetensors").exists()
    assert [p.name for p in run.glob("state-*")] == ["state-s1-e0"] and (run / "state-s1-e0" / "COMPLETE").exists()
    tensors = saved_tensors(run)
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)


def test_nan_in_a_record_is_written_as_null(tmp_path):
    from greedy.checkpoint import RunDir

    run = RunDir(tmp_path)
    run.log({"stage": 1, "epoch": 1, "loss": float("nan"), "test_acc": float("inf")})
    run.save_summary({"rows": [{"test_acc": float("-inf")}]})
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {"stage": 1, "epoch": 1, "loss": None,
                                                                      "test_acc": None}
    assert strict_json((tmp_path / "summary.json").read_text()) == {"rows": [{"test_acc": None}]}


def test_the_message_names_the_stage_epoch_and_step(tmp_path, capsys):
    real, calls = trainer.F.cross_entropy, {"n": 0}

    def cross_entropy(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("inf") if calls["n"] == STEPS + 7 else 1.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.F, "cross_entropy", cross_entropy)
        assert exit_code(train.main, [*TINY, "--out-dir", str(tmp_path), "--name", "run"]) == 3
    assert capsys.readouterr().err == (
        "error: stage1 diverged: the loss became non-finite at epoch 2, step 7 (global step 30); training stopped, "
        "finished stages and the last complete epoch's state are kept; lower --lr (or add --warmup-epochs) and start "
        "a new run\n")
