"""The device data path: per-sample crop + flip with the paper's distribution, the DataLoader path's exact images,
seeded permutations, disjoint shards, accelerate's end-of-epoch state, and a bit-identical resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from scipy.stats import chi2_contingency, chisquare

from greedy.datasets import Normalization, create_datasets, create_loaders
from greedy.datasets.device import CropFlip, DeviceLoader
from tests.helpers import cli, kill_during_stage2, start_train, summary, user_env

NORM = Normalization(255.0, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def reference_crop_flip(image: torch.Tensor, dy: int, dx: int, flip: int, padding: int = 4) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) + RandomHorizontalFlip for one image and given draws, by hand."""
    h, w = image.shape[-2:]
    padded = F.pad(image, (padding,) * 4)  # zeros: the mean colour in normalized space
    out = padded[:, padding + dy:padding + dy + h, padding + dx:padding + dx + w]
    return out.flip(-1) if flip else out


def test_every_sample_is_its_reference_crop_and_flip():
    gen = torch.Generator().manual_seed(0)
    images = NORM(torch.randint(0, 256, (64, 3, 32, 32), generator=gen, dtype=torch.uint8))
    crop_flip = CropFlip(32, 32, 4)
    draws = crop_flip.draws[crop_flip.draw(64, torch.Generator().manual_seed(1))]
    out = crop_flip(crop_flip.store(images, "cpu"), torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and out.shape == images.shape
    for i, (dy, dx, flip) in enumerate(draws.tolist()):
        assert torch.equal(out[i], reference_crop_flip(images[i], dy, dx, flip)), (i, dy, dx, flip)
    assert (draws[:, :2].abs() == 4).any()  # some crop reads the padding: it is exactly 0 there


def test_crop_offsets_and_flips_have_the_papers_distribution():
    """Offsets uniform over the 9 x 9 positions, flips with probability 1/2, each sample its own draw."""
    crop_flip = CropFlip(32, 32, 4)
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([crop_flip.draws[crop_flip.draw(256, gen)] for _ in range(100)])  # 25,600 samples
    dy, dx, flip = (draws[:, i].numpy() for i in range(3))
    cells = np.bincount((dy + 4) * 9 + (dx + 4), minlength=81)
    assert cells.size == 81 and chisquare(cells).pvalue > 1e-3  # uniform over the 81 offsets
    flips = np.bincount(flip, minlength=2)
    assert chisquare(flips).pvalue > 1e-3  # p = 1/2
    joint = np.zeros((2, 81))
    np.add.at(joint, (flip, (dy + 4) * 9 + (dx + 4)), 1)
    assert chi2_contingency(joint).pvalue > 1e-3  # flip independent of the offset
    # every sample its own draw: neighbours in a batch are independent (a batch-wide draw would tie them)
    pairs = np.zeros((9, 9))
    np.add.at(pairs, (dy[0::2] + 4, dy[1::2] + 4), 1)
    assert chi2_contingency(pairs).pvalue > 1e-3
    first = crop_flip.draws[crop_flip.draw(128, torch.Generator().manual_seed(3))]
    assert len(torch.unique(first, dim=0)) > 50  # one batch: many different crops


def test_the_device_path_serves_the_dataloaders_exact_images():
    bundle = create_datasets("digits", augment="crop_flip")
    assert bundle.train.crop_padding == 4 and bundle.test.crop_padding == 0
    train, test = create_loaders(bundle, 32, device="cpu", seed=0)
    stored = train.images[:, :, :-1].reshape(bundle.train.images.shape)
    assert torch.equal(stored, bundle.train.images) and not train.images[:, :, -1].any()  # + the zero padding
    assert torch.equal(torch.cat([x for x, _ in test]), bundle.test.images)  # in order, unaugmented
    for device in ("cpu", None):  # an evaluation: the test split alone, the training split not copied
        none, alone = create_loaders(bundle, 32, device=device, with_train=False)
        assert none is None and torch.equal(torch.cat([x for x, _ in alone]), bundle.test.images)


def ids_loader(n: int, batch: int, **kw) -> DeviceLoader:
    """A loader whose 'images' are the sample ids (float), to see which samples each batch holds."""
    ids = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return DeviceLoader(ids, torch.arange(n), batch, device=torch.device("cpu"), **kw)


def test_an_epoch_is_a_seeded_permutation():
    loader = ids_loader(100, 32, shuffle=True, seed=5)
    loader.set_epoch(3)
    batches = [y for _, y in loader]
    assert [len(b) for b in batches] == [32, 32, 32, 4]  # the last partial batch is kept
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(100))
    loader.set_epoch(3)
    assert torch.equal(torch.cat([y for _, y in loader]), order)  # a function of (seed, epoch): resumable
    loader.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in loader]), order)
    x, y = next(iter(ids_loader(10, 10, shuffle=False)))
    assert torch.equal(x.flatten().long(), y) and torch.equal(y, torch.arange(10))


def test_process_shards_are_disjoint_and_cover_the_epoch():
    n, batch = 128, 16
    shards = []
    for rank in range(2):
        loader = ids_loader(n, batch, shuffle=True, seed=1, num_processes=2, process_index=rank)
        loader.set_epoch(7)
        shards.append(torch.cat([y for _, y in loader]))
        assert len(loader) == 4
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(n))


@pytest.fixture
def fresh_accelerate_state():
    """An Accelerator made here must not leave its process-wide state to the in-process runs of later tests."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_end_of_epoch_reaches_gradient_accumulation(fresh_accelerate_state):
    """accelerate syncs gradients at the last batch of an epoch even mid accumulation window."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = accelerator.prepare(torch.nn.Linear(1, 1))
    syncs = []
    for _ in ids_loader(48, 16, shuffle=True):  # 3 batches: the 3rd ends a window of 1
        with accelerator.accumulate(model):
            syncs.append(accelerator.sync_gradients)
    assert syncs == [False, True, True]


SHARD_SCRIPT = """
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from greedy.datasets.device import DeviceLoader
acc = Accelerator(cpu=True)
n = 70
ids = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
kw = dict(device=acc.device, seed=3, num_processes=acc.num_processes, process_index=acc.process_index)
train = DeviceLoader(ids, torch.arange(n), 8, shuffle=True, **kw)
train.set_epoch(2)
mine = torch.cat([y for _, y in train])
seen = acc.gather(mine).tolist()
test = DeviceLoader(ids, torch.arange(n), 8, shuffle=False, **kw)
gathered = torch.cat([acc.gather_for_metrics(y) for _, y in test]).tolist()
if acc.is_main_process:
    print("RESULT", len(mine), len(seen), len(set(seen)), gathered == list(range(n)))
acc.end_training()  # destroys the process group: gloo's threads must not outlive it at exit
"""


def test_two_gloo_processes_split_the_epoch_and_gather_the_test_set_exactly(tmp_path, root):
    script = tmp_path / "shards.py"
    script.write_text(SHARD_SCRIPT)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    env = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([*launch, str(script)], cwd=root, capture_output=True, text=True,
                          env=user_env(**env))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    # 70 samples, global batch 16: 5 batches of 8 per process; the last global batch wraps around 10 samples
    assert line.split()[1:] == ["40", "80", "70", "True"]


ARGS = ["-c", "configs/digits_k2.yaml", "--epochs", "3", "--decay-epochs", "2", "--augment", "crop_flip",
        "--no-progress"]


@pytest.mark.training
def test_sigkill_then_resume_with_device_augmentation_is_bit_identical(tmp_path):
    proc = start_train(*ARGS, "--out-dir", str(tmp_path), "--name", "killed")
    kill_during_stage2(proc, tmp_path / "killed")
    cli("train.py", *ARGS, "--out-dir", str(tmp_path), "--name", "reference")
    resumed = cli("train.py", "--resume", str(tmp_path / "killed"))
    assert "resuming stage2 at epoch" in resumed.stdout
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("killed", "reference"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary(tmp_path / "killed")["stage_test_acc"] == summary(tmp_path / "reference")["stage_test_acc"]
    records = [json.loads(r) for r in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(r) for r in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_acc"] for r in records] == [r["train_acc"] for r in reference]


def test_loaders_follow_device_data():
    bundle = create_datasets("digits", augment="crop_flip")
    train, test = create_loaders(bundle, 32, device="cpu", seed=0)
    assert isinstance(train, DeviceLoader) and train.crop_flip is not None and test.crop_flip is None
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    train, _ = create_loaders(bundle, 32)
    assert isinstance(train, torch.utils.data.DataLoader)
