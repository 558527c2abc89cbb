"""A non-finite loss stops the run at once: exit 3, nothing non-finite saved, strict JSON, the last good state kept."""

import json
import math

import pytest
from safetensors.torch import load_file

from tests.helpers import cli

# Stage 1 (8 channels) survives this learning rate; stage 2 (128 channels) diverges in its second epoch.
DIVERGES_IN_STAGE2 = ["-c", "configs/digits_k2.yaml", "--widths", "8,128,128", "--downsample", "3", "--epochs", "2",
                      "--batch-size", "64", "--lr", "1.5", "--no-progress"]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (RFC 8259)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    out = tmp_path_factory.mktemp("diverged")
    proc = cli("train.py", *DIVERGES_IN_STAGE2, "--out-dir", str(out), "--name", "run", check=False)
    return out, proc


def test_stops_at_the_first_non_finite_loss(diverged):
    out, proc = diverged
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: stage2 diverged: the loss became non-finite at epoch 2, step ")
    metrics = [strict_json(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    # every finished epoch is recorded, the diverged one is not: the run stopped inside it
    assert [(r["stage"], r["epoch"]) for r in metrics] == [(1, 1), (1, 2), (2, 1)]
    assert all(math.isfinite(r["loss"]) for r in metrics)


def test_keeps_finished_stages_and_the_last_good_state_all_finite(diverged):
    out, _ = diverged
    run = out / "run"
    assert not (run / "summary.json").exists() and not (run / "model.safetensors").exists()
    assert (run / "stage1.safetensors").exists() and not (run / "stage2.safetensors").exists()
    assert (run / "state-s1-e0" / "COMPLETE").exists()  # resumable from stage 2, epoch 1
    tensors = [t for f in run.rglob("*.safetensors") for t in load_file(str(f)).values()]
    assert tensors and all(t.isfinite().all() for t in tensors if t.is_floating_point())


def test_resume_with_another_lr_is_refused_and_a_fresh_run_works(diverged, tmp_path):
    out, _ = diverged
    proc = cli("train.py", "--resume", str(out / "run"), "--lr", "0.05", check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: --resume {out / 'run'}: --lr 0.05 contradicts the saved config (lr: 1.5); drop "
                           "the override or start a new run\n")
    args = [a if a != "1.5" else "0.05" for a in DIVERGES_IN_STAGE2]
    cli("train.py", *args, "--out-dir", str(tmp_path), "--name", "fresh")
    assert strict_json((tmp_path / "fresh" / "summary.json").read_text())["final_test_acc"] > 0.5


def test_nan_in_a_record_is_written_as_null(tmp_path):
    from greedy.checkpoint import RunDir

    run = RunDir(tmp_path)
    run.log({"stage": 1, "epoch": 1, "loss": float("nan"), "test_acc": float("inf")})
    run.save_summary({"rows": [{"test_acc": float("-inf")}]})
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {"stage": 1, "epoch": 1, "loss": None,
                                                                      "test_acc": None}
    assert strict_json((tmp_path / "summary.json").read_text()) == {"rows": [{"test_acc": None}]}

