"""Kill a run mid-stage, resume it, and get the uninterrupted result; refuse bad resumes cleanly."""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import cli, kill_during_stage2, start_train, summary, tree_digest

# Default digits widths with 4 epochs a stage: slow enough (~0.2 s an epoch) to be killed mid-stage.
ARGS = ["-c", "configs/digits_k2.yaml", "--epochs", "4", "--decay-epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def killed_and_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    proc = start_train(*ARGS, "--out-dir", str(out), "--name", "killed")
    kill_during_stage2(proc, out / "killed")
    reference = cli("train.py", *ARGS, "--out-dir", str(out), "--name", "reference")
    assert reference.returncode == 0
    return out


@pytest.mark.training
def test_sigkill_mid_stage2_then_resume_is_bit_identical(killed_and_reference, tmp_path):
    out = killed_and_reference
    run = out / "killed"
    states = sorted(p.name for p in run.iterdir() if p.name.startswith("state-"))
    assert states and states[-1].startswith("state-s1-"), states  # killed inside stage 2 (0-based 1)
    assert not (run / "stage2.safetensors").exists()

    # Work on a copy: the killed run stays available to the other tests of this module.
    copy = tmp_path / "killed"
    subprocess.run(["cp", "-a", str(run), str(copy)], check=True)
    proc = cli("train.py", "--resume", str(copy))
    assert "resuming stage2 at epoch" in proc.stdout

    resumed, reference = summary(copy), summary(out / "reference")
    assert resumed["final_test_acc"] == reference["final_test_acc"]
    assert resumed["stage_test_acc"] == reference["stage_test_acc"]
    a, b = load_file(copy / "model.safetensors"), load_file(out / "reference" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(r) for r in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [(s, e) for s in (1, 2, 3) for e in (1, 2, 3, 4)]


def resume_fails(run, *extra):
    before = tree_digest(run)
    proc = cli("train.py", "--resume", str(run), *extra, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert tree_digest(run) == before  # nothing saved is lost or overwritten
    return proc.stderr


def test_resume_refuses_contradicting_overrides(killed_and_reference):
    err = resume_fails(killed_and_reference / "killed", "--k", "3")
    assert "--k 3 contradicts the saved config (k: 2)" in err


@pytest.fixture
def killed_copy(killed_and_reference, tmp_path):
    """A copy of the killed run, free to be damaged."""
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(killed_and_reference / "killed"), str(run)], check=True)
    return run


def test_resume_accepts_overrides_that_match_the_saved_config(killed_copy, killed_and_reference):
    """The saved value again is no contradiction: the resume runs to the end, to the uninterrupted weights."""
    proc = cli("train.py", "--resume", str(killed_copy), "--k", "2", "--epochs", "4", "--dataset", "digits")
    assert "resuming stage2 at epoch" in proc.stdout
    a, b = load_file(killed_copy / "model.safetensors"), load_file(killed_and_reference / "reference" /
                                                                   "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in b)


def latest_state(run):
    return sorted(p for p in run.iterdir() if p.name.startswith("state-"))[-1]


def test_resume_rejects_corrupt_stage_weights(killed_copy):
    weights = killed_copy / "stage1.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "stage1.safetensors is corrupt or truncated" in resume_fails(killed_copy)


def test_resume_rejects_corrupt_training_state(killed_copy):
    (latest_state(killed_copy) / "optimizer.bin").write_bytes(b"\x80\x02garbage")
    assert "optimizer.bin is corrupt or truncated" in resume_fails(killed_copy)


def test_resume_rejects_incomplete_state(killed_copy):
    (latest_state(killed_copy) / "COMPLETE").unlink()
    assert "is incomplete" in resume_fails(killed_copy)
