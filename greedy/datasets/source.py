"""What every data set is made of: the bundle a run trains on, the registered source, raw arrays, checks.

A data set is one `DataSource` registered in `greedy.registry.DATASETS` under the name the config's `dataset` key
takes (one file per data set in this package: digits.py, fashion_mnist.py, cifar.py, imagenet.py, fake.py).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from greedy.errors import UsageError
from greedy.registry import DATASETS


@dataclass
class DataBundle:
    """Train/test datasets plus the shape facts a model needs."""

    train: Dataset  # items: (float tensor C x H x W, normalized; int label)
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int  # spatial size of the tensors the model sees (square)
    # per-channel statistics the images were normalized with, for values in [0, 1] (an objective that
    # reconstructs the input, InfoPro, de-normalizes with them); () where unknown (a benchmark's random tensors)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    val: Dataset | None = None  # held out of the training set (val_split), read like `test`
    # your own (train, test) DataLoaders over `train` and `test` (greedy.loader_data): training and evaluation read
    # them as they are (batch size, sampler, workers, collate) instead of loaders the factory builds
    loaders: tuple[DataLoader, DataLoader] | None = None

    def for_training(self) -> DataBundle:
        """What training sees: with a validation split, `test` is the validation split (per-epoch evaluation,
        probes, every selection), so that the test set is read once, after training; else the bundle itself."""
        return self if self.val is None else dataclasses.replace(self, test=self.val, val=None)

    def unaugmented_train(self) -> Dataset:
        """The training split read with the test split's deterministic transform (no augmentation, no RNG drawn):
        for probes fit on training images. A shallow copy: the images are shared, `self.train` is unchanged."""
        view = copy.copy(self.train)
        view.transform = getattr(self.test, "transform", None)
        if isinstance(view, TensorImageDataset):
            view.crop_padding = 0  # the device path's augmentation too
        return view


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before any file is read (--print-model, timm)."""

    num_classes: int
    in_chans: int
    img_size: int


@dataclass(frozen=True)
class DataSource:
    """A registered data set: its shape facts, its reader and the statistics it is normalized with.

    `read`, for an in-memory data set (`in_memory`): `(data_dir: Path, download: bool, img_size: int | None) ->
    RawData`, pixel values in [0, max_value]; the factory normalizes, resizes and wraps them. For image folders:
    `(data_dir: Path, img_size: int, augment: bool, strict: bool, stats) -> DataBundle`, `stats` the config's
    (mean, std), else the source's own. `stats`: the published
    per-channel (mean, std) of the training split for values in [0, 1]; None: computed from the training split.
    `files`: the reader needs `data_dir` (config refuses a missing one unless `download` is set and supported).
    """

    info: DatasetInfo
    read: Callable[..., Any]
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    in_memory: bool = True
    files: bool = True
    download: bool = False
    count_classes: Callable[[Path], int] | None = None  # classes found in data_dir where `info` cannot know them


def register_dataset(name: str, source: DataSource) -> DataSource:
    """Make `source` available as `dataset: name` (config, --help, the factory)."""
    return DATASETS.add(name, source)


def data_source(name: str) -> DataSource:
    """The registered data set `name`; raises UsageError naming the choices for an unknown one."""
    return DATASETS.get(name)


def stratified_split(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into `targets` (N int labels): from every class, round(fraction x its count)
    items drawn by a generator seeded with `seed` (at least one where fraction > 0 and the class has two or more);
    both index sets sorted. Raises ValueError for a fraction outside [0, 1)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in torch.unique(targets).tolist():
        members = torch.nonzero(targets == label).flatten()
        count = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    val = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(targets), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


class TensorImageDataset(Dataset):
    """In-memory images ``N x C x H x W`` with integer targets and an optional per-item tensor transform.

    `crop_padding` > 0 means the split is augmented with the paper's crop + flip: `transform` on the per-item path,
    `greedy.datasets.device.CropFlip` when a DeviceLoader holds `images` on the device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        crop_padding: int = 0,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.transform = transform
        self.crop_padding = crop_padding

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


@dataclass
class RawData:
    """Images as loaded from disk (``N x C x H x W``, values in ``[0, max_value]``) before normalization."""

    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    num_classes: int
    max_value: float = 255.0


def check_labels(path: Path | str, labels: np.ndarray, num_classes: int, dataset: str) -> None:
    """Refuse a label file (or batch) holding a label outside 0..num_classes-1, naming the file, the first bad
    record (0-based) and its value.

    Raises:
        UsageError: `DIR/data_batch_3: label 10 at record 7 is outside 0..9 (CIFAR-10 has 10 classes); ...`.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise UsageError(f"{path}: label {labels[bad[0]]} at record {bad[0]} is outside 0..{num_classes - 1} "
                         f"({dataset} has {num_classes} classes); replace the file with the original")
