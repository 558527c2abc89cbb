"""Every local objective through the real train.py: greedy, decoupled, pipelined (2 processes), DDP (2 processes),
bf16, and SIGKILL + resume; each module's loss terms in metrics.jsonl and W&B; timm export and probes after."""

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import train
from tests.helpers import ROOT, cli, free_port, kill_during_stage2, same_weights, start_train, summary, user_env
from tests.wandb_log import read_offline_run

pytestmark = [pytest.mark.training, pytest.mark.usefixtures("one_thread")]

RESNET = ["-c", "configs/digits_resnet.yaml", "--num-modules", "3", "--epochs", "2", "--no-progress"]
TERMS = {"predsim": ["sim", "pred", "readout"], "infopro_ce": ["recon", "task", "readout"],
         "infopro_contrast": ["recon", "task", "readout"], "auglocal": ["aug", "readout"],
         "man": ["recon", "task", "readout"], "man_pp": ["recon", "task", "readout"]}


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["greedy", "decoupled"])
@pytest.mark.parametrize("objective", sorted(TERMS))
def test_every_objective_trains_the_digits_resnet(objective, mode, tmp_path):
    assert train.main([*RESNET, "--objective", objective, "--mode", mode, "--out-dir", str(tmp_path),
                       "--name", "run"]) == 0
    result = summary(tmp_path / "run")
    assert result["final_test_acc"] > 0.5 and min(result["stage_test_acc"]) > 0.3  # chance is 0.1
    for record in records(tmp_path / "run"):
        terms = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("loss/")}
        if record["stage"] < 3:  # modules 1..K-1: the objective's terms, which add up to the loss
            assert list(terms) == TERMS[objective]
            assert sum(terms.values()) == pytest.approx(record["loss"], rel=1e-4)
        else:  # the last module trains the net's classifier on cross-entropy alone
            assert terms == {}


@pytest.mark.parametrize("objective", ["predsim", "infopro_contrast", "auglocal"])
def test_pipelined_over_two_processes_equals_the_sequential_run(objective, tmp_path):
    """The second group (blocks 2 and 3) gets the activations and, for InfoPro, the input images: the same weights
    and records as the sequential run."""
    args = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "2",
            "--no-progress", "--mode", "decoupled", "--objective", objective]
    port, procs = free_port(), []
    for rank in range(2):
        env = user_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        pipe = [*args, "--pipeline", "2", "--pipeline-split", "1,2", "--out-dir", str(tmp_path), "--name", "pipe"]
        procs.append(subprocess.Popen([sys.executable, "train.py", *pipe], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    assert train.main([*args, "--out-dir", str(tmp_path), "--name", "seq"]) == 0
    assert [p.wait(120) for p in procs] == [0, 0], procs[0].stderr.read().decode()
    assert same_weights(tmp_path / "seq", tmp_path / "pipe")
    timing = {"time", "step_time"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "pipe")) == strip(records(tmp_path / "seq"))
    assert f"loss/{TERMS[objective][0]}" in records(tmp_path / "pipe")[-2]  # block 2, in the second group


@pytest.mark.parametrize("objective", ["infopro_contrast", "man"])
def test_objective_under_ddp_keeps_every_rank_equal(objective, tmp_path):
    """The objective's modules are synchronised with the block: a rank whose decoder (or EMA copy) drifted would
    drift the block."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cli(*launch, "train.py", *RESNET, "--objective", objective, "--mode", "decoupled", "--batch-size", "32",
        "--out-dir", str(tmp_path), "--name", "ddp", env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    result = summary(tmp_path / "ddp")
    assert result["num_processes"] == 2 and len(set(result["rank_weight_digests"])) == 1
    assert result["final_test_acc"] > 0.5


def test_infopro_in_bf16(tmp_path):
    cli("train.py", *RESNET, "--objective", "infopro_contrast", "--mixed-precision", "bf16", "--out-dir",
        str(tmp_path), "--name", "bf16")  # a process of its own: this one's accelerate state is fp32
    assert summary(tmp_path / "bf16")["final_test_acc"] > 0.5


@pytest.mark.parametrize("objective", ["infopro_contrast", "man"])
def test_sigkill_mid_stage2_then_resume_is_bit_identical(objective, tmp_path):
    """The objective's modules (InfoPro's decoder and task head; MAN's copies, the EMA one included) are in the saved
    state: the resumed run ends on the uninterrupted run's weights and records, bit for bit."""
    args = ["-c", "configs/digits_k2.yaml", "--epochs", "4", "--decay-epochs", "2", "--no-progress",
            "--objective", objective, "--out-dir", str(tmp_path)]
    proc = start_train(*args, "--name", "killed")
    kill_during_stage2(proc, tmp_path / "killed")
    assert not (tmp_path / "killed" / "stage2.safetensors").exists()
    cli("train.py", *args, "--name", "reference")
    resumed = cli("train.py", "--resume", str(tmp_path / "killed"))
    assert "resuming stage2 at epoch" in resumed.stdout
    assert same_weights(tmp_path / "killed", tmp_path / "reference")
    timing = {"time", "step_time", "cache_time"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "killed")) == strip(records(tmp_path / "reference"))
    first = load_file(tmp_path / "reference" / "stage1.safetensors")
    assert first and not any("objective" in k for k in first) and all(torch.isfinite(v).all() for v in first.values())


def test_an_infopro_run_logs_its_terms_to_wandb_exports_to_timm_and_is_probed(tmp_path):
    """What a researcher does after training with an objective: the W&B history holds each term of each step
    (adding up to the logged loss), timm loads the trained backbone without the objective's modules, and the
    probes take each local module's output."""
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cli("train.py", *RESNET, "--objective", "infopro_contrast", "--wandb", "--log-every", "5", "--out-dir",
        str(tmp_path), "--name", "run", env=env)
    run = tmp_path / "run"
    _, history = read_offline_run(run)
    logged = [row for row in history if "train/loss" in row]
    with_terms = [row for row in logged if "train/recon" in row]
    assert with_terms and len(with_terms) < len(logged)  # modules 1, 2: their terms; module 3: cross-entropy alone
    for row in with_terms:
        assert row["train/recon"] + row["train/task"] + row["train/readout"] == pytest.approx(row["train/loss"],
                                                                                             rel=1e-5)
    state = load_file(run / "model.safetensors")
    net = timm.create_model("greedy_run", run_dir=str(run), pretrained=True).eval()
    assert net.state_dict().keys() == state.keys() and not any("objective" in k for k in state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    cli("evaluate.py", str(run), "--analysis", "linear", "--analysis-samples", "200", env=env)
    layers = json.loads((run / "analysis.json").read_text())["runs"][0]["results"]["linear"]["layers"]
    assert [e["depth"] for e in layers] == [0, 1, 2, 3]
