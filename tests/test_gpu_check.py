"""scripts/gpu_check.py stays ready for a GPU: it runs the real paper net and input path here on CPU, tiny."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from greedy.errors import exit_code
from tests.helpers import load_script

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The check makes an Accelerator per precision (the last one bf16): later in-process runs must not inherit it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_gpu_check_runs_every_stage_and_projects_the_paper_schedule(tmp_path):
    gpu_check = load_script("gpu_check")
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "4", "--images", "64",
                           "--eval-batches", "1", "--eval-batch-size", "8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["pipeline_images_per_s"] > 0
    assert set(report["variants"]) == {"fp32", "bf16+channels_last"}
    for variant in report["variants"].values():
        rows = variant["rows"]
        assert [r["stage"] for r in rows] == [1, 2, 3, 4]  # the CIFAR-10 k=3 paper net's four stages
        assert all(r["train img/s"] > 0 and r["eval img/s"] > 0 for r in rows)
        epoch = [50_000 / r["train img/s"] + 10_000 / r["eval img/s"] for r in rows]
        assert variant["projected_schedule_min"] == pytest.approx(sum(50 * e / 60 for e in epoch))


def test_gpu_check_refuses_a_missing_gpu_in_one_line(capsys):
    gpu_check = load_script("gpu_check")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    assert exit_code(gpu_check.main, ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: no CUDA device here; pass --device cpu for the smoke test"]
