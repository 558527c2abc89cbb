"""Decoupled greedy learning: every block at once, each on its own auxiliary loss and detached input."""

import copy
import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file

import train
from greedy import trainer
from greedy.builder import GreedyBuilder
from greedy.config import build_config, load_yaml
from greedy.models import GreedyNet, create_greedy_net
from greedy.trainer import decoupled_step, train_step

TINY = ["-c", "configs/digits_k2.yaml", "--widths", "16,16,32", "--downsample", "3", "--epochs", "3",
        "--batch-size", "64", "--no-progress", "--mode", "decoupled"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoupled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoupled")
    assert train.main([*TINY, "--out-dir", str(out), "--name", "ref"]) == 0
    return out


@pytest.mark.training
def test_every_block_learns_and_is_logged_per_epoch(decoupled_run):
    run = decoupled_run / "ref"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "decoupled" and [r["stage"] for r in summary["rows"]] == [1, 2, 3]
    assert min(summary["stage_test_acc"]) > 0.7  # chance is 0.1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"], r["stage_name"]) for r in records] == [
        (e, j, f"block{j}") for e in (1, 2, 3) for j in (1, 2, 3)]
    assert summary["total_time_s"] == records[-1]["time"]  # one joint pass, not the sum over blocks

    cfg = build_config({**load_yaml("configs/digits_k2.yaml"), "widths": [16, 16, 32], "downsample": [3]})
    set_seed(cfg.seed)  # what train.py does before building the net
    initial = create_greedy_net(cfg, num_classes=10, in_chans=1).state_dict()
    final = load_file(run / "model.safetensors")
    for j in range(3):
        for key in (f"blocks.{j}.conv.weight", f"heads.{j}.fc.weight"):
            assert not torch.allclose(final[key], initial[key]), key
    assert {p.name for p in run.iterdir()} >= {"decoupled.safetensors", "model.safetensors"}
    assert not any(p.name.startswith("state-") for p in run.iterdir())


@pytest.mark.training
def test_resume_after_a_crash_is_bit_identical(decoupled_run, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = trainer.evaluate_parts

    def crash_in_epoch2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_parts", crash_in_epoch2)
    with pytest.raises(KeyboardInterrupt):
        train.main([*TINY, "--out-dir", str(tmp_path), "--name", "killed"])
    monkeypatch.setattr(trainer, "evaluate_parts", real)
    run = tmp_path / "killed"
    assert [p.name for p in run.iterdir() if p.name.startswith("state-")] == ["state-s2-e0"]
    with (run / "metrics.jsonl").open("a") as f:  # a record written after the last saved state
        f.write(json.dumps({"stage": 1, "stage_name": "block1", "epoch": 2, "time": 0.0}) + "\n")
    capsys.readouterr()
    assert train.main(["--resume", str(run)]) == 0
    assert "resuming decoupled at epoch 2/3" in capsys.readouterr().out
    resumed, reference = load_file(run / "model.safetensors"), load_file(decoupled_run / "ref" / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in records] == [(e, j) for e in (1, 2, 3) for j in (1, 2, 3)]


def test_detach_stops_gradients_at_block_boundaries():
    torch.manual_seed(0)
    net = GreedyNet([8, 8, 16], 10, in_chans=1, downsample=[3])
    alone = copy.deepcopy(net)
    accelerator = Accelerator(cpu=True)
    stage = GreedyBuilder(net, "decoupled").stage(0)
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9) for p in stage.parts]
    prepared = accelerator.prepare(*stage.parts, *optimizers)
    models, optimizers = list(prepared[:3]), list(prepared[3:])

    gradients = [0, 0, 0]  # gradient computations reaching each block's conv weight
    for j, block in enumerate(net.blocks):
        block.conv.weight.register_hook(lambda g, j=j: gradients.__setitem__(j, gradients[j] + 1))
    first = GreedyBuilder(alone).stage(0)
    first_model, first_opt = accelerator.prepare(first.trainable,
                                                 torch.optim.SGD(first.trainable.parameters(), lr=0.1, momentum=0.9))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        decoupled_step(stage.prefix, models, optimizers, accelerator, x, y)
        train_step(first.prefix, first_model, first_opt, accelerator, x, y)
    assert gradients == [3, 3, 3]  # one per step: only from the block's own head
    # Block 1 trained decoupled is block 1 trained alone on its head: later losses never reached it.
    for key, value in net.blocks[0].state_dict().items():
        assert torch.equal(value, alone.blocks[0].state_dict()[key]), key
    assert not torch.equal(net.blocks[1].conv.weight, alone.blocks[1].conv.weight)
