"""Feature caching: the same training as from the images, in RAM or memory-mapped, and after a resume."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import train
from greedy import trainer
from greedy.cache import FeatureCache, cache_enabled
from greedy.datasets import create_datasets
from greedy.models import GreedyNet
from greedy.schema import Config
from tests import helpers

TINY = [*helpers.TINY, "--epochs", "2"]  # the later --epochs wins


pytestmark = pytest.mark.usefixtures("one_thread")


def run_train(out, name, *args, capsys=None) -> tuple[dict, dict, str]:
    """train.py in-process: (final weights, summary, stdout)."""
    assert train.main([*TINY, "--out-dir", str(out), "--name", name, *args]) == 0
    text = capsys.readouterr().out if capsys else ""
    return load_file(out / name / "model.safetensors"), json.loads((out / name / "summary.json").read_text()), text


def max_rel_diff(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)).item()
               for k in a if a[k].is_floating_point())


def same_accuracy(a: dict, b: dict) -> bool:
    """Each stage's test accuracy equal up to one of the 360 test images: weights within 1e-5 of each other may
    flip an image that sits on a decision boundary on another CPU's kernels."""
    return all(abs(x - y) <= 1.01 / 360 for x, y in zip(a["stage_test_acc"], b["stage_test_acc"], strict=True))


@pytest.fixture(scope="module")
def uncached(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    return out, run_train(out, "off", "--cache", "off")


@pytest.mark.training
def test_cache_on_matches_off_and_memmap_matches_ram(uncached, capsys):
    out, (w_off, s_off, _) = uncached
    w_ram, s_ram, log_ram = run_train(out, "ram", "--cache", "on", capsys=capsys)
    w_map, s_map, log_map = run_train(out, "mmap", "--cache", "on", "--cache-budget-gb", "0", capsys=capsys)
    assert "cache: built stage1" in log_ram and "cache: advanced stage3" in log_ram and "RAM" in log_ram
    assert log_map.count("memory-mapped file") == 3 and "RAM" not in log_map
    assert not list((out / "mmap").glob(".cache-*"))  # deleted when the stages end
    # the cache build is timed, reported on its own and counted in each stage's time
    records = [json.loads(line) for line in (out / "ram" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cache_time"] > 0 and r["time"] > r["cache_time"] for r in records)
    assert s_ram["cache_time_s"] == pytest.approx(sum({r["stage"]: r["cache_time"] for r in records}.values()))
    assert s_off["cache_time_s"] == 0
    # fp32 cache: the same computation up to the rounding of the prefix's batch composition, so the same weights
    # (bit-identical under ATEN_CPU_CAPABILITY=default, avx2 and avx512 with one thread, December 2026)
    assert max_rel_diff(w_ram, w_off) < 1e-5
    assert same_accuracy(s_ram, s_off)
    # memory-mapped storage holds exactly the same features as RAM
    assert s_map["stage_test_acc"] == s_ram["stage_test_acc"]
    assert all(torch.equal(w_map[k], w_ram[k]) for k in w_ram)


@pytest.mark.training
def test_fp16_cache_accuracy_difference_is_bounded(uncached, capsys):
    out, (_, s_off, _) = uncached
    _, s16, log = run_train(out, "fp16", "--cache", "on", "--cache-dtype", "fp16", capsys=capsys)
    assert "float16 (3.5 MiB" in log  # half of the fp32 cache's 7.0 MiB
    # Rounded inputs put SGD on another trajectory (weights differ like another seed's); accuracy stays put:
    # every stage of both at 0.97-0.99 under the three CPU kernel sets (December 2026), chance is 0.1.
    assert min(s16["stage_test_acc"]) > 0.9
    assert max(abs(a - b) for a, b in zip(s16["stage_test_acc"], s_off["stage_test_acc"], strict=True)) <= 0.05


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; another mixed precision needs a fresh one (and so does the next)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.training
def test_bf16_cache_is_lossless_under_bf16_autocast(tmp_path, capsys, fresh_accelerate_state):
    """The block's conv rounds its input to bf16 anyway: storing bf16 features changes nothing."""
    w_on, s_on, log = run_train(tmp_path, "on", "--mixed-precision", "bf16", "--cache", "on", capsys=capsys)
    w_off, s_off, _ = run_train(tmp_path, "off", "--mixed-precision", "bf16", "--cache", "off")
    assert "bfloat16" in log
    assert max_rel_diff(w_on, w_off) < 1e-5  # bit-identical under the three CPU kernel sets
    assert same_accuracy(s_on, s_off)


@pytest.mark.training
def test_resume_rebuilds_the_cache_from_the_loaded_prefix(uncached, monkeypatch, capsys):
    out, _ = uncached
    w_ref, s_ref, _ = run_train(out, "ref", "--cache", "on", "--epochs", "3")
    calls = {"n": 0}
    real = trainer.evaluate_parts

    def crash_in_stage2_epoch2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # stage1 x3, stage2 epoch 1, then stage2 epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_parts", crash_in_stage2_epoch2)
    with pytest.raises(KeyboardInterrupt):
        run_train(out, "killed", "--cache", "on", "--epochs", "3")
    monkeypatch.setattr(trainer, "evaluate_parts", real)
    capsys.readouterr()
    assert train.main(["--resume", str(out / "killed")]) == 0
    log = capsys.readouterr().out
    assert "cache: built stage2" in log and "resuming stage2 at epoch 2/3" in log
    resumed = load_file(out / "killed" / "model.safetensors")
    assert all(torch.equal(resumed[k], w_ref[k]) for k in w_ref)


@pytest.mark.training
def test_cache_on_with_augmentation_warns_once_and_trains(tmp_path, capsys):
    _, summary, log = run_train(tmp_path, "aug", "--cache", "on", "--augment", "crop_flip", "--epochs", "1",
                                capsys=capsys)
    assert log.count("augmentation cannot be applied before a frozen prefix") == 1
    assert summary["final_test_acc"] > 0.3


@pytest.mark.parametrize("mode, augment, cache, expected", [
    ("greedy", "none", "auto", True), ("greedy", "crop_flip", "auto", False), ("e2e", "none", "auto", False),
    ("decoupled", "none", "on", False), ("greedy", "none", "off", False), ("greedy", "crop_flip", "on", True),
])
def test_cache_enabled(mode, augment, cache, expected):
    assert cache_enabled(Config(mode=mode, augment=augment, cache=cache), say=lambda _: None) is expected


def test_advance_equals_prefix_and_train_order_equals_image_loader(tmp_path):
    data = create_datasets("digits")
    torch.manual_seed(0)
    net = GreedyNet([8, 8], 10, in_chans=1).eval()
    cache = FeatureCache(tmp_path, batch_size=100, budget_gb=0, say=lambda _: None)
    cache.build(net.prefix(0), data, 0).advance(net.blocks[0])
    assert cache.stage == 1 and not cache.in_ram
    with torch.no_grad():
        direct = net.prefix(1)(data.test.images)
    torch.testing.assert_close(cache.splits["test"].features, direct)
    train_loader, _ = cache.loaders(batch_size=32)
    torch.manual_seed(3)
    cached_labels = torch.cat([y for _, y in train_loader])
    torch.manual_seed(3)
    image_labels = torch.cat([y for _, y in DataLoader(data.train, batch_size=32, shuffle=True)])
    assert torch.equal(cached_labels, image_labels)
    cache.close()
    assert not list(tmp_path.glob(".cache-*"))


def test_cache_stores_what_the_block_really_computes_in():
    """The auto storage dtype is measured under the run's autocast, not read from the config."""
    from functools import partial

    from greedy.cache import cache_dtype, computed_dtype

    assert computed_dtype() == torch.float32
    bf16 = computed_dtype(partial(torch.autocast, "cpu", dtype=torch.bfloat16))
    assert bf16 == torch.bfloat16
    assert cache_dtype(Config(mixed_precision="bf16"), bf16) == torch.bfloat16
    # mixed precision named but not in effect (accelerate's CPU fp16): the block computes, and the cache stores, fp32
    assert cache_dtype(Config(mixed_precision="fp16"), computed_dtype()) == torch.float32
    assert cache_dtype(Config(cache_dtype="fp16"), torch.float32) == torch.float16  # explicit: stored narrow, upcast
