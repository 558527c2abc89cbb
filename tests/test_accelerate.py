"""The same train.py under accelerate: 2 processes on CPU (gloo), and bf16 mixed precision."""

import sys

import pytest

from tests.helpers import TINY, cli, summary

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    cli("train.py", *TINY, "--out-dir", str(out), "--name", "fp32")
    return summary(out / "fp32")


def test_two_processes_match_one(single_process, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    proc = cli(*launch[1:], "train.py", *TINY, "--out-dir", str(tmp_path), "--name", "ddp",
               env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    result = summary(tmp_path / "ddp")
    assert result["num_processes"] == 2
    digests = result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # every stage's weights identical across ranks
    # Another global batch (2 x 64), so another trajectory: it must learn as well as one process does, not land on
    # the same images. Measured under ATEN_CPU_CAPABILITY=default|avx2|avx512 (December 2026): one process
    # 0.983-0.989, two 0.986-0.992; 0.05 is 18 of the 360 test images.
    assert result["final_test_acc"] > 0.9 and result["final_test_acc"] >= single_process["final_test_acc"] - 0.05
    assert proc.stdout.count("final test accuracy") == 1  # only the main process prints
    assert "global batch: 64 per process x 2 processes x 1 accumulation steps = 128" in proc.stdout


def test_bf16_close_to_fp32(single_process, tmp_path):
    cli("train.py", *TINY, "--mixed-precision", "bf16", "--out-dir", str(tmp_path), "--name", "bf16")
    result = summary(tmp_path / "bf16")
    # bf16 rounding puts SGD on another trajectory; it must learn as well as fp32 does (measured under the three CPU
    # kernel sets: fp32 0.983-0.989, bf16 0.978-0.981).
    assert result["final_test_acc"] > 0.9 and result["final_test_acc"] >= single_process["final_test_acc"] - 0.05


def test_two_processes_train_a_residual_net_in_local_modules(tmp_path):
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cli(*launch, "train.py", "-c", "configs/digits_resnet.yaml", "--num-modules", "2", "--epochs", "2",
        "--batch-size", "32", "--no-progress", "--out-dir", str(tmp_path), "--name", "res",
        env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    result = summary(tmp_path / "res")
    assert result["num_processes"] == 2 and len(set(result["rank_weight_digests"])) == 1
    assert len(result["stage_test_acc"]) == 2 and result["final_test_acc"] > 0.5  # chance is 0.1
