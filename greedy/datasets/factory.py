"""The one data factory: a registered data set's train/test splits (normalized, resized, wrapped) and their
loaders.

Small datasets (digits, Fashion-MNIST, CIFAR-10/100, fake) are materialized once as a normalized
float32 tensor ``N x C x H x W`` in a :class:`TensorImageDataset`,
served either on the accelerator by :class:`greedy.datasets.device.DeviceLoader` (the default: whole-batch
indexing and augmentation, no workers) or per item by a torch DataLoader. ImageNet stays a PIL pipeline
over an ``ImageFolder`` tree with worker processes. Every loading problem the user can fix raises
:class:`greedy.errors.UsageError` with a one-line message.

Augmentation randomness: the DataLoader path draws from torch's global RNG (seeding torch or restoring its
RNG state makes a run reproducible); the device path from generators seeded by (seed, epoch, process).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from greedy.datasets.device import DeviceLoader
from greedy.datasets.source import (
    DataBundle,
    DatasetInfo,
    RawData,
    TensorImageDataset,
    check_labels,
    data_source,
    stratified_split,
)
from greedy.datasets.transforms import (
    AUGMENTATIONS,
    CROP_PADDING,
    Normalization,
    crop_flip_transform,
    normalize,
    train_stats,
)
from greedy.errors import UsageError
from greedy.registry import DATASETS


def dataset_info(dataset: str) -> DatasetInfo:
    """What a model needs to know about `dataset` before any file is read; raises UsageError for an unknown name."""
    return data_source(dataset).info


def dataset_classes(dataset: str, data_dir: str | Path = "data") -> int:
    """How many classes `dataset` has: its DatasetInfo's, or for a data set whose classes are its folders (folder)
    the class folders in `data_dir`, counted without reading an image (0 where there is no such folder)."""
    source = data_source(dataset)
    return source.count_classes(Path(data_dir)) if source.count_classes else source.info.num_classes


def dataset_stats(dataset: str, data_dir: str | Path = "data",
                  img_size: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) a run normalizes `dataset` with, for pixel values in [0, 1]: the published
    statistics for Fashion-MNIST and CIFAR (as create_datasets uses them), timm's ImageNet statistics (the
    ImageNet pipeline's Normalize), and for digits, folder and fake the statistics of their training split, computed
    here exactly as create_datasets does (digits: embedded in scikit-learn, a few milliseconds)."""
    source = data_source(dataset)
    if source.stats is not None:
        return source.stats
    raw = source.read(Path(data_dir), False, img_size)  # folder: its images resized to img_size as it reads them
    return train_stats(raw.train_images, raw.max_value)


def create_datasets(
    dataset: str,
    data_dir: str | Path = "data",
    *,
    img_size: int | None = None,
    augment: str = "none",
    download: bool = False,
    strict_data: bool = False,
    val_split: float = 0.0,
    split_seed: int = 0,
    norm: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DataBundle:
    """Build the train/test datasets for ``dataset``; ``img_size`` None keeps the native size.

    ``strict_data``: an unreadable image (ImageNet folders) raises UsageError instead of being skipped and recorded
    (see CheckedImageFolder). ``val_split`` > 0: that fraction of the training set, stratified and drawn with
    ``split_seed`` (`source.stratified_split`), becomes the bundle's ``val`` split, unaugmented, and is no longer in
    ``train``; the normalization statistics stay those of the whole training set. ``norm`` (mean, std) per channel,
    for values in [0, 1], replaces the data set's statistics (published, computed, or ImageNet's for folders).
    Raises UsageError for every problem with the files, naming the file.
    """
    source = data_source(dataset)
    if augment not in AUGMENTATIONS:
        raise UsageError(f"unknown augment {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise UsageError(f"img_size must be a positive integer, got {img_size!r}; pass e.g. --img-size 32")
    root = Path(data_dir).expanduser()
    stats = (tuple(norm[0]), tuple(norm[1])) if norm and norm[0] else None
    if not source.in_memory:
        if augment == "crop_flip":
            raise UsageError(
                "augment 'crop_flip' is for the in-memory datasets; "
                f"use --augment imagenet or none for '{dataset}'"
            )
        bundle = source.read(root, img_size or source.info.img_size, augment == "imagenet", strict_data,
                             stats or source.stats)
        return _hold_out(bundle, val_split, split_seed)
    if augment == "imagenet":
        raise UsageError(
            "augment 'imagenet' only applies to dataset 'imagenet'; "
            f"use --augment crop_flip or none for '{dataset}'"
        )
    raw = source.read(root, download, img_size)
    bundle = _in_memory_bundle(dataset, raw, img_size, augment == "crop_flip", stats or source.stats)
    return _hold_out(bundle, val_split, split_seed)


def _hold_out(bundle: DataBundle, val_split: float, split_seed: int) -> DataBundle:
    """The bundle with `val_split` of its training split (stratified, `split_seed`) moved to `val`, read like the
    test split (no augmentation); the bundle itself for 0. In-memory tensors are indexed; an image folder
    (CheckedImageFolder) keeps its one scan and splits its sample list."""
    if not val_split:
        return bundle
    train = bundle.train
    keep, held = stratified_split(torch.as_tensor(train.targets), val_split, split_seed)
    if isinstance(train, TensorImageDataset):
        val = TensorImageDataset(train.images[held], train.targets[held], bundle.test.transform)
        train = TensorImageDataset(train.images[keep], train.targets[keep], train.transform,
                                   crop_padding=train.crop_padding)
    else:
        val = train.subset(held.tolist(), bundle.test.transform)
        train = train.subset(keep.tolist(), train.transform)
    return dataclasses.replace(bundle, train=train, val=val)


def create_loaders(
    bundle: DataBundle,
    batch_size: int,
    *,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    device: torch.device | str | None = None,
    seed: int = 0,
    num_processes: int = 1,
    process_index: int = 0,
    with_train: bool = True,
) -> tuple[DataLoader | DeviceLoader | None, DataLoader | DeviceLoader]:
    """Return (train loader: shuffled, keeps the last partial batch; test loader: in order); without `with_train`
    (an evaluation) the train loader is None and the training split is not copied to the device.

    With `device` (an in-memory dataset only, see `device_data_supported`), both are `DeviceLoader`s holding the
    data on that device, each process taking its own disjoint shard (`num_processes`, `process_index`; shuffling
    and augmentation are functions of `seed` and the epoch). Otherwise torch DataLoaders, which accelerate shards
    when it prepares them; with workers they prefetch 4 batches each, and `pin_memory` applies only with a GPU.
    Raises UsageError for batch sizes or worker counts out of range.
    """
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0, got {num_workers}")
    if device is not None:
        if not device_data_supported(bundle):
            in_memory = ", ".join(name for name in DATASETS if DATASETS[name].in_memory)
            raise UsageError(f"device data needs an in-memory dataset ({in_memory}); pass --device-data off for "
                             "imagenet")
        shard = {"device": torch.device(device), "seed": seed, "num_processes": num_processes,
                 "process_index": process_index}
        return (device_loader(bundle.train, batch_size, shuffle=True, **shard) if with_train else None,
                device_loader(bundle.test, eval_batch_size, shuffle=False, **shard))
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory and torch.cuda.is_available(),  # pinning is for copies to a GPU
        "persistent_workers": persistent_workers and num_workers > 0,
        "prefetch_factor": 4 if num_workers > 0 else None,
    }
    train = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=False, **common)
    test = DataLoader(bundle.test, batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    return (train if with_train else None), test


def default_workers(dataset: str, num_workers: int | None, local_processes: int = 1) -> int:
    """DataLoader workers per process: `num_workers` when set; else for image folders (imagenet) the node's CPU cores
    shared among its `local_processes` (at least 1, at most 8: decoding is the bottleneck, see docs/PERFORMANCE.md),
    and 0 for the in-memory datasets (a worker process only adds pickling to a tensor dataset)."""
    if num_workers is not None:
        return num_workers
    if data_source(dataset).in_memory:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(local_processes, 1)))


def device_data_supported(bundle: DataBundle) -> bool:
    """Whether both splits are in-memory tensors a DeviceLoader can hold (every dataset but ImageNet folders)."""
    return isinstance(bundle.train, TensorImageDataset) and isinstance(bundle.test, TensorImageDataset)


def device_loader(split: TensorImageDataset, batch_size: int, *, shuffle: bool, device: torch.device | str,
                  **shard) -> DeviceLoader:
    """A DeviceLoader holding the split's normalized float32 images on `device`, augmented when the split is
    (`crop_padding`). `shard`: DeviceLoader's seed and process keys."""
    return DeviceLoader(split.images, split.targets.to(device), batch_size, shuffle=shuffle, padding=split.crop_padding,
                        device=device, **shard)


def _in_memory_bundle(name: str, raw: RawData, img_size: int | None, crop_flip: bool,
                      stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> DataBundle:
    """Normalize, resize once and wrap the raw arrays; the one path for every in-memory dataset.

    ``crop_flip`` pads with 0 in normalized space (the mean color) before the random crop.
    """
    in_chans, native = raw.train_images.shape[1], raw.train_images.shape[-1]
    size = img_size or native
    mean, std = stats or train_stats(raw.train_images, raw.max_value)
    for split, targets in (("train", raw.train_targets), ("test", raw.test_targets)):  # the readers check files
        check_labels(f"dataset '{name}', {split} split", targets.numpy(), raw.num_classes, name)
    norm = Normalization(raw.max_value, tuple(map(float, mean)), tuple(map(float, std)))
    padding = CROP_PADDING if crop_flip else 0
    transform = crop_flip_transform(size, padding) if crop_flip else None
    train = TensorImageDataset(normalize(raw.train_images, norm, size), raw.train_targets.long(), transform,
                               crop_padding=padding)
    test = TensorImageDataset(normalize(raw.test_images, norm, size), raw.test_targets.long())
    return DataBundle(train, test, raw.num_classes, in_chans, size, norm.mean, norm.std)
