"""val_split: a seeded, stratified validation split of the training set; per-epoch evaluation and every selection
read it, the test set is read once, after training."""

import csv
import json

import pytest
import torch

import train
from greedy import session
from greedy.datasets import create_datasets
from greedy.datasets.source import stratified_split
from tests.helpers import TINY, load_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stratified_split_keeps_each_class_share_and_is_seeded():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(targets, 0.1, seed=0)
    assert torch.bincount(targets[held]).tolist() == [5, 3, 2]  # round(0.1 x each class)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(100))  # disjoint, nothing lost
    again, other = stratified_split(targets, 0.1, seed=0)[1], stratified_split(targets, 0.1, seed=1)[1]
    assert torch.equal(again, held) and not torch.equal(other, held)
    assert stratified_split(torch.tensor([0, 0, 1]), 0.1, seed=0)[1].tolist() in ([0], [1])  # at least one of a class
    assert len(stratified_split(targets, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        stratified_split(targets, 1.0, seed=0)


def test_the_bundle_holds_out_an_unaugmented_validation_split():
    full = create_datasets("digits", augment="crop_flip")
    split = create_datasets("digits", augment="crop_flip", val_split=0.2, split_seed=3)
    assert len(split.train) + len(split.val) == len(full.train) and abs(len(split.val) - 0.2 * len(full.train)) <= 10
    assert torch.equal(split.test.images, full.test.images)  # the test split is untouched
    assert (split.mean, split.std) == (full.mean, full.std)  # normalized as the whole training set
    assert split.train.crop_padding > 0 and split.val.crop_padding == 0 and split.val.transform is None
    seen = split.for_training()
    assert seen.test is split.val and seen.val is None and full.for_training() is full


def test_training_evaluates_on_val_and_reads_the_test_set_once_at_the_end(tmp_path, monkeypatch, capsys):
    """Every loader set built during training holds the validation split; the test split is handed over once,
    for the final evaluation; metrics.jsonl records val_acc; summary.json the test and the val heads."""
    handed = []
    real = session.create_loaders

    def spy(bundle, *args, **kwargs):
        handed.append(len(bundle.test))
        return real(bundle, *args, **kwargs)

    monkeypatch.setattr(session, "create_loaders", spy)
    out = tmp_path / "runs"
    assert train.main([*TINY, "--epochs", "2", "--mode", "decoupled", "--val-split", "0.2", "--out-dir", str(out),
                       "--name", "v", "--probe-every", "2", "--probes", "linear"]) == 0
    run = out / "v"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r and "loss" in r]
    assert epochs and all("val_acc" in r and "test_acc" not in r for r in epochs)
    probes = [r for r in records if r.get("kind") == "probe"]
    assert probes and all(r["held_out"] == "val" for r in probes)  # the probes read the validation split too
    summary = json.loads((run / "summary.json").read_text())
    assert summary["held_out"] == "val" and len(summary["stage_val_acc"]) == 3 and summary["final_test_acc"] > 0.5
    split = create_datasets("digits", val_split=0.2, split_seed=0)  # the run's seed: 0
    n_test, n_val = len(split.test), len(split.val)
    assert n_test != n_val
    assert handed.count(n_test) == 1 and handed[-2] == n_test  # the test set: once, after training
    assert set(handed) == {n_test, n_val}
    assert " val 0." in capsys.readouterr().out  # the per-epoch line names the split it evaluated


def test_compare_selects_the_best_stage_on_the_validation_split(tmp_path):
    out = tmp_path / "runs"
    for seed in (0, 1):
        assert train.main([*TINY, "--epochs", "1", "--val-split", "0.2", "--seed", str(seed), "--out-dir", str(out),
                           "--name", f"s{seed}"]) == 0
    script = load_script("compare")
    assert script.main([str(out / "s0"), str(out / "s1"), "--out-dir", str(tmp_path), "--experiment", "cmp"]) == 0
    [row] = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    summaries = [json.loads((out / name / "summary.json").read_text()) for name in ("s0", "s1")]
    val = [sum(s["stage_val_acc"][j] for s in summaries) / 2 for j in range(3)]
    test = [sum(s["stage_test_acc"][j] for s in summaries) / 2 for j in range(3)]
    best = max(range(3), key=lambda j: val[j])
    assert row["selected_on"] == "val" and row["best_stage"] == str(best + 1)
    assert float(row["best_stage_acc_mean"]) == pytest.approx(test[best], abs=1e-6)  # its test accuracy
    assert "**validation split**" in (tmp_path / "cmp" / "comparison.md").read_text()


def write_tree(root, per_class=(5, 2), colors=((200, 30, 60), (10, 220, 120), (40, 40, 230))):
    """DIR/train/<class>/*.png and DIR/val/<class>/*.png: solid colors with a little seeded noise."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for c, color in enumerate(colors):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(-20, 21, (20, 24, 3), generator=rng)
                pixels = (torch.tensor(color) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{c}_{i}.png")


def test_an_image_folder_holds_out_an_unaugmented_validation_split(tmp_path):
    write_tree(tmp_path)
    full = create_datasets("imagenet", tmp_path, img_size=16, augment="imagenet")
    split = create_datasets("imagenet", tmp_path, img_size=16, augment="imagenet", val_split=0.4, split_seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (9, 6, 6)  # round(0.4 x 5) = 2 of each class
    assert sorted(split.val.targets) == [0, 0, 1, 1, 2, 2]
    paths = {p for p, _ in split.train.samples} | {p for p, _ in split.val.samples}
    assert len(paths) == 15 and paths == {p for p, _ in full.train.samples}  # disjoint, nothing lost
    assert split.val.transform is split.test.transform  # read like the test split
    assert split.train.transform is not split.test.transform  # training keeps its augmentation
    torch.manual_seed(0)
    first = split.val[3][0]
    torch.manual_seed(1)
    assert torch.equal(first, split.val[3][0])  # no random crop or flip on the validation split
    again = create_datasets("imagenet", tmp_path, img_size=16, val_split=0.4, split_seed=0)
    assert again.val.samples == split.val.samples  # seeded
    assert len(full.train) == 15 and full.val is None  # the scan it was cut from is unchanged


def test_an_image_folder_takes_your_normalization(tmp_path):
    write_tree(tmp_path, per_class=(1, 1))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    data = create_datasets("imagenet", tmp_path, img_size=16, norm=(mean, std))
    default = create_datasets("imagenet", tmp_path, img_size=16)
    assert (data.mean, data.std) == (mean, std) and default.mean == pytest.approx((0.485, 0.456, 0.406))
    image = data.test[0][0]
    centre = image[:, 6:10, 6:10].mean(dim=(1, 2)) * 0.25 + 0.5  # back to [0, 1]
    assert centre * 255 == pytest.approx([200, 30, 60], abs=8)  # the first class's colour, its noise averaged


def test_train_py_validates_on_a_split_of_an_image_folder(tmp_path):
    write_tree(tmp_path / "tree", per_class=(8, 3))
    out = tmp_path / "runs"
    assert train.main([*TINY, "--dataset", "imagenet", "--data-dir", str(tmp_path / "tree"), "--img-size", "16",
                       "--num-workers", "0", "--batch-size", "8", "--epochs", "2", "--val-split", "0.25",
                       "--norm-mean", "0.4,0.4,0.4", "--norm-std", "0.3,0.3,0.3", "--out-dir", str(out),
                       "--name", "folder"]) == 0
    records = [json.loads(line) for line in (out / "folder" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "epoch" in r and "val_acc" in r] and not [r for r in records if "test_acc" in r]
    summary = json.loads((out / "folder" / "summary.json").read_text())
    assert summary["held_out"] == "val" and len(summary["stage_val_acc"]) == len(summary["stage_test_acc"]) == 3
    assert all(0 <= a <= 1 for a in summary["stage_val_acc"] + summary["stage_test_acc"])
