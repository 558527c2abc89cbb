"""The one data factory: datasets, normalization, augmentation and loaders.

Small datasets (digits, Fashion-MNIST, CIFAR-10/100, fake) are materialized once as a normalized
float32 tensor ``N x C x H x W`` in a :class:`TensorImageDataset`,
served either on the accelerator by :class:`greedy.device_loader.DeviceLoader` (the default: whole-batch
indexing and augmentation, no workers) or per item by a torch DataLoader. ImageNet stays a PIL pipeline
over an ``ImageFolder`` tree with worker processes. Every loading problem the user can fix raises
:class:`greedy.errors.UsageError` with a one-line message.

Augmentation randomness: the DataLoader path draws from torch's global RNG (seeding torch or restoring its
RNG state makes a run reproducible); the device path from generators seeded by (seed, epoch, process).
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import pickle
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import v2

from greedy.device_loader import DeviceLoader
from greedy.errors import UsageError, one_line
from greedy.files import append_text

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagenet", "fake")
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip", "imagenet")

# Published per-channel statistics of the training sets (pixel values scaled to [0, 1]).
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FAKE_TRAIN_SIZE, _FAKE_TEST_SIZE, _FAKE_TEST_OFFSET = 512, 128, 1_000_000
_IMAGENET_DEFAULT_SIZE = 224
_IMAGENET_CROP_PCT = 0.875
CROP_PADDING = 4  # the paper's crop_flip: zero padding before the random crop
_CHUNK = 4096  # images converted per step when materializing, bounds peak memory


@dataclass
class DataBundle:
    """Train/test datasets plus the shape facts a model needs."""

    train: Dataset  # items: (float tensor C x H x W, normalized; int label)
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int  # spatial size of the tensors the model sees (square)

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


_DATASET_INFO = {
    "digits": DatasetInfo(10, 1, 8),
    "fashion_mnist": DatasetInfo(10, 1, 28),
    "cifar10": DatasetInfo(10, 3, 32),
    "cifar100": DatasetInfo(100, 3, 32),
    "imagenet": DatasetInfo(1000, 3, _IMAGENET_DEFAULT_SIZE),
    "fake": DatasetInfo(10, 3, 32),
}


def dataset_info(dataset: str) -> DatasetInfo:
    _check_choice("dataset", dataset, DATASETS)
    return _DATASET_INFO[dataset]


_PUBLISHED_STATS = {"fashion_mnist": _FASHION_MNIST_STATS, "cifar10": _CIFAR10_STATS, "cifar100": _CIFAR100_STATS}


def dataset_stats(dataset: str, data_dir: str | Path = "data") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) a run normalizes `dataset` with, for pixel values in [0, 1]: the published
    statistics for Fashion-MNIST and CIFAR (as create_datasets uses them), timm's ImageNet statistics (the
    ImageNet pipeline's Normalize), and for digits and fake the statistics of their training split, computed
    here exactly as create_datasets does (digits: embedded in scikit-learn, a few milliseconds)."""
    _check_choice("dataset", dataset, DATASETS)
    if dataset == "imagenet":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    if dataset in _PUBLISHED_STATS:
        return _PUBLISHED_STATS[dataset]
    raw = _IN_MEMORY_LOADERS[dataset](Path(data_dir), False, None)
    return _train_stats(raw.train_images, raw.max_value)


@dataclass(frozen=True)
class Normalization:
    """``(x / max_value - mean) / std`` per channel, computed in float32 as ``x * scale + shift`` (one fused op).

    The one normalization of the in-memory datasets (`x`: ``B x C x H x W``, any real dtype; returns float32 of the
    same shape).
    """

    max_value: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.tensor(self.std, dtype=torch.float64)
        scale, shift = 1.0 / (self.max_value * std), -torch.tensor(self.mean, dtype=torch.float64) / std
        scale, shift = (t.to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1) for t in (scale, shift))
        return torch.addcmul(shift, x if x.dtype == torch.uint8 else x.to(torch.float32), scale)


class TensorImageDataset(Dataset):
    """In-memory images ``N x C x H x W`` with integer targets and an optional per-item tensor transform.

    `crop_padding` > 0 means the split is augmented with the paper's crop + flip: `transform` on the per-item path,
    `greedy.device_loader.CropFlip` when a DeviceLoader holds `images` on the device.
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
class _RawData:
    """Images as loaded from disk (``N x C x H x W``, values in ``[0, max_value]``) before normalization."""

    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    num_classes: int
    max_value: float = 255.0
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: compute from train


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def create_datasets(
    dataset: str,
    data_dir: str | Path = "data",
    *,
    img_size: int | None = None,
    augment: str = "none",
    download: bool = False,
    strict_data: bool = False,
) -> DataBundle:
    """Build the train/test datasets for ``dataset``; ``img_size`` None keeps the native size.

    ``strict_data``: an unreadable image (ImageNet folders) raises UsageError instead of being skipped and recorded
    (see CheckedImageFolder). Raises UsageError for every problem with the files, naming the file.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("augment", augment, AUGMENTATIONS)
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise UsageError(f"img_size must be a positive integer, got {img_size!r}; pass e.g. --img-size 32")
    root = Path(data_dir).expanduser()
    if dataset == "imagenet":
        if augment == "crop_flip":
            raise UsageError(
                "augment 'crop_flip' is for the in-memory datasets; "
                "use --augment imagenet or none for 'imagenet'"
            )
        return _imagenet_bundle(root, img_size or _IMAGENET_DEFAULT_SIZE, augment == "imagenet", strict_data)
    if augment == "imagenet":
        raise UsageError(
            "augment 'imagenet' only applies to dataset 'imagenet'; "
            f"use --augment crop_flip or none for '{dataset}'"
        )
    raw = _IN_MEMORY_LOADERS[dataset](root, download, img_size)
    return _in_memory_bundle(dataset, raw, img_size, augment == "crop_flip")


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
) -> tuple[DataLoader | DeviceLoader, DataLoader | DeviceLoader]:
    """Return (train loader: shuffled, keeps the last partial batch; test loader: in order).

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
            raise UsageError("device data needs an in-memory dataset (digits, fashion_mnist, cifar10, cifar100, "
                             "fake); pass --device-data off for imagenet")
        shard = {"device": torch.device(device), "seed": seed, "num_processes": num_processes,
                 "process_index": process_index}
        return (device_loader(bundle.train, batch_size, shuffle=True, **shard),
                device_loader(bundle.test, eval_batch_size, shuffle=False, **shard))
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory and torch.cuda.is_available(),  # pinning is for copies to a GPU
        "persistent_workers": persistent_workers and num_workers > 0,
        "prefetch_factor": 4 if num_workers > 0 else None,
    }
    train = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=False, **common)
    test = DataLoader(bundle.test, batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    return train, test


def default_workers(dataset: str, num_workers: int | None, local_processes: int = 1) -> int:
    """DataLoader workers per process: `num_workers` when set; else for imagenet the node's CPU cores shared among
    its `local_processes` (at least 1, at most 8: decoding is the bottleneck, see docs/PERFORMANCE.md), and 0 for
    the in-memory datasets (a worker process only adds pickling to a tensor dataset)."""
    if num_workers is not None:
        return num_workers
    if dataset != "imagenet":
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


# ----------------------------------------------------------------------------------------------
# Shared in-memory path
# ----------------------------------------------------------------------------------------------


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


def crop_flip_transform(size: int, padding: int = CROP_PADDING) -> v2.Compose:
    """The paper's CIFAR augmentation on one normalized tensor: pad 4 (with 0, the mean color), random crop, flip
    (the per-item path; `greedy.device_loader.CropFlip` is the same augmentation over a batch)."""
    return v2.Compose([v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()])


def _in_memory_bundle(name: str, raw: _RawData, img_size: int | None, crop_flip: bool) -> DataBundle:
    """Normalize, resize once and wrap the raw arrays; the one path for every in-memory dataset.

    ``crop_flip`` pads with 0 in normalized space (the mean color) before the random crop.
    """
    in_chans, native = raw.train_images.shape[1], raw.train_images.shape[-1]
    size = img_size or native
    mean, std = raw.stats or _train_stats(raw.train_images, raw.max_value)
    for split, targets in (("train", raw.train_targets), ("test", raw.test_targets)):  # the readers check files
        check_labels(f"dataset '{name}', {split} split", targets.numpy(), raw.num_classes, name)
    norm = Normalization(raw.max_value, tuple(mean), tuple(std))
    padding = CROP_PADDING if crop_flip else 0
    transform = crop_flip_transform(size, padding) if crop_flip else None
    train = TensorImageDataset(_normalize(raw.train_images, norm, size), raw.train_targets.long(), transform,
                               crop_padding=padding)
    test = TensorImageDataset(_normalize(raw.test_images, norm, size), raw.test_targets.long())
    return DataBundle(train, test, raw.num_classes, in_chans, size)


def _train_stats(images: torch.Tensor, max_value: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``images / max_value`` (std 0 becomes 1)."""
    x = images.to(torch.float64) / max_value
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def _normalize(images: torch.Tensor, norm: Normalization, size: int) -> torch.Tensor:
    """float32 ``norm(images)`` (``(x / max_value - mean) / std``), resized to ``size`` (bilinear, antialias) after
    scaling to [0, 1], chunked to bound peak memory."""
    n, c = images.shape[:2]
    out = torch.empty((n, c, size, size), dtype=torch.float32)
    unit = Normalization(1.0, norm.mean, norm.std)
    for start in range(0, n, _CHUNK):
        x = images[start : start + _CHUNK]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x.to(torch.float32) / norm.max_value, size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
            out[start : start + _CHUNK] = unit(x)
        else:
            out[start : start + _CHUNK] = norm(x)
    return out


# ----------------------------------------------------------------------------------------------
# Per-dataset loaders: return raw arrays, labels, number of classes
# ----------------------------------------------------------------------------------------------


def _load_digits(data_dir: Path, download: bool, img_size: int | None) -> _RawData:
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 split (independent of the run seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # N x 1 x 8 x 8, values 0..16
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)]
    return _RawData(*tensors, num_classes=10, max_value=16.0)


def _load_fake(data_dir: Path, download: bool, img_size: int | None) -> _RawData:
    """torchvision FakeData generated at ``img_size`` (default 32); train and test use disjoint seeds."""
    from torchvision.datasets import FakeData

    shape = (3, img_size or 32, img_size or 32)
    splits = []
    for size, offset in ((_FAKE_TRAIN_SIZE, 0), (_FAKE_TEST_SIZE, _FAKE_TEST_OFFSET)):
        fake = FakeData(
            size=size, image_size=shape, num_classes=10, random_offset=offset, transform=v2.PILToTensor()
        )
        images, targets = zip(*(fake[i] for i in range(size)), strict=True)
        splits += [torch.stack(images), torch.tensor(targets, dtype=torch.int64)]
    return _RawData(*splits, num_classes=10)


def _load_cifar(data_dir: Path, download: bool, hundred: bool) -> _RawData:
    """CIFAR-10/100 python-pickle batches, read directly (no md5 check, so re-packed copies load too)."""
    name = "cifar100" if hundred else "cifar10"
    folder = data_dir / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test"] if hundred else ["test_batch"]
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and download:
        _torchvision_cifar_download(data_dir, hundred)
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        label = "CIFAR-100" if hundred else "CIFAR-10"
        raise UsageError(
            f"dataset '{name}': no {label} batches under {data_dir} (expected {folder / missing[0]}); "
            "pass --data-dir DIR or --download"
        )
    label_key = "fine_labels" if hundred else "labels"
    classes = 100 if hundred else 10
    train_x, train_y = _read_cifar_batches([folder / f for f in train_files], label_key, classes)
    test_x, test_y = _read_cifar_batches([folder / f for f in test_files], label_key, classes)
    stats = _CIFAR100_STATS if hundred else _CIFAR10_STATS
    return _RawData(train_x, train_y, test_x, test_y, num_classes=100 if hundred else 10, stats=stats)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR batch holds: dict, list, str, bytes, int and numpy arrays.

    `pickle.load` on a data file runs any callable the file names (a crafted `data_batch_1` can call
    `os.system`); this one resolves only numpy's array-reconstruction functions and refuses every other global.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 writes bytes: encode(str, 'latin1')
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds (refused: "
                                     "reading it would run code from the data file)")


def read_cifar_batch(path: Path) -> dict[str, object]:
    """One CIFAR python batch as a dict with str keys, read with the restricted `_CifarUnpickler`.

    The file is Krizhevsky's pickled dict (https://www.cs.toronto.edu/~kriz/cifar.html): `data` N x 3072 uint8,
    `labels` (CIFAR-10) or `fine_labels`/`coarse_labels` (CIFAR-100), `filenames`, `batch_label`; keys are bytes
    or str. Raises UsageError naming the file for anything else, and for unreadable or truncated files.
    """
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise UsageError(f"CIFAR batch {path} refused: {one_line(err)}; replace it with the original file") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise UsageError(f"cannot read CIFAR batch {path}: {type(err).__name__}: {one_line(err)}; "
                         "re-download it") from None
    if not isinstance(entry, dict):
        raise UsageError(f"CIFAR batch {path} holds a {type(entry).__name__}, not a dict; re-download it")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


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


def _read_cifar_batches(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate pickle batches: ``data`` is N x 3072 uint8 (R, G, B planes of 32x32, row-major); labels are
    checked to lie in 0..num_classes-1 (check_labels)."""
    images, labels = [], []
    for path in paths:
        entry = read_cifar_batch(path)
        if "data" not in entry or label_key not in entry:
            raise UsageError(f"CIFAR batch {path} has no '{'data' if 'data' not in entry else label_key}' entry "
                             f"(keys: {', '.join(map(str, entry))}); re-download it")
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UsageError(f"CIFAR batch {path}: 'data' is {data.dtype} of shape {data.shape}, not N rows of 3072 "
                             "uint8 pixels (3 x 32 x 32); re-download it")
        try:
            batch_labels = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise UsageError(f"CIFAR batch {path}: '{label_key}' is not a list of integers; re-download it") from None
        if len(data) != len(batch_labels):
            raise UsageError(
                f"CIFAR batch {path} has {len(data)} images but {len(batch_labels)} labels; re-download it"
            )
        check_labels(path, batch_labels, num_classes, f"CIFAR-{num_classes}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _torchvision_cifar_download(data_dir: Path, hundred: bool) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    try:
        (CIFAR100 if hundred else CIFAR10)(root=str(data_dir), train=True, download=True)
    except Exception as err:  # network, disk, checksum: all fixable by the user
        name = "cifar100" if hundred else "cifar10"
        raise UsageError(
            f"dataset '{name}': download into {data_dir} failed ({type(err).__name__}: {one_line(err)}); "
            "download it manually and pass --data-dir DIR"
        ) from err


def _load_cifar10(data_dir: Path, download: bool, img_size: int | None) -> _RawData:
    return _load_cifar(data_dir, download, hundred=False)


def _load_cifar100(data_dir: Path, download: bool, img_size: int | None) -> _RawData:
    return _load_cifar(data_dir, download, hundred=True)


# idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = uint8), the
# number of dimensions, then each dimension as a big-endian uint32, then the values.
_IDX_UINT8 = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of uint8 values with `ndim` dimensions (images: N x 28 x 28, labels: N), plain or gzip-ed.

    Raises UsageError naming the file and what is wrong: not gzip, truncated, wrong magic, type or dimensions, or a
    length that does not match the header.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise UsageError(f"{path} is not a complete gzip file ({type(err).__name__}: {one_line(err)}); replace it "
                         "with the original download") from None
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err.strerror}); check the file") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{path} is {len(data)} bytes, shorter than an idx header; replace it with the original file")
    zero, kind, dims = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or kind != _IDX_UINT8 or dims != ndim:
        magic = int.from_bytes(data[:4], "big")
        raise UsageError(f"{path} has magic number {magic:#010x}, not {(_IDX_UINT8 << 8) | ndim:#010x} (idx uint8 with "
                         f"{ndim} dimensions); is it the right file?")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise UsageError(f"{path} holds {len(data) - header} values but its header announces "
                         f"{' x '.join(map(str, shape))} = {expected - header}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion_mnist(data_dir: Path, download: bool, img_size: int | None) -> _RawData:
    """Fashion-MNIST's four idx files, plain or as distributed (.gz, read as is), from `data_dir`, its
    `FashionMNIST/raw` (torchvision's layout), or downloaded there by torchvision."""
    files = _fashion_mnist_files(data_dir, download)
    arrays = [read_idx(files[name], 3 if "images" in name else 1) for name in _FMNIST_FILES]
    for name, array in zip(_FMNIST_FILES, arrays, strict=True):
        if "labels" in name:
            check_labels(files[name], array, 10, "Fashion-MNIST")
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if len(images) != len(labels):
            raise UsageError(f"dataset 'fashion_mnist': {split} has {len(images)} images but {len(labels)} labels; "
                             "the files do not belong together")
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    return _RawData(tensors[0][:, None], tensors[1].long(), tensors[2][:, None], tensors[3].long(), num_classes=10,
                    stats=_FASHION_MNIST_STATS)


def _fashion_mnist_files(data_dir: Path, download: bool) -> dict[str, Path]:
    """The path of each of the four files: uncompressed first, then .gz, in data_dir/FashionMNIST/raw or data_dir."""
    raw = data_dir / "FashionMNIST" / "raw"
    for folder in (raw, data_dir):
        for suffix in ("", ".gz"):
            paths = {name: folder / f"{name}{suffix}" for name in _FMNIST_FILES}
            if all(p.is_file() for p in paths.values()):
                return paths
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(root=str(data_dir), train=True, download=True)
        except Exception as err:  # network, disk, checksum: all fixable by the user
            raise UsageError(
                f"dataset 'fashion_mnist': download into {data_dir} failed ({type(err).__name__}: "
                f"{one_line(err)}); put the four .gz files in a folder and pass --data-dir DIR"
            ) from err
        return {name: raw / name for name in _FMNIST_FILES}
    raise UsageError(
        f"dataset 'fashion_mnist': no Fashion-MNIST files under {data_dir} "
        f"(expected {raw / _FMNIST_FILES[0]} or {data_dir / (_FMNIST_FILES[0] + '.gz')} "
        "and the other three); pass --data-dir DIR or --download"
    )


_IN_MEMORY_LOADERS: dict[str, Callable[[Path, bool, int | None], _RawData]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_fashion_mnist,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "fake": _load_fake,
}


# ----------------------------------------------------------------------------------------------
# ImageNet: PIL pipeline over ImageFolder trees
# ----------------------------------------------------------------------------------------------


def _visible(name: str) -> bool:
    """Hidden (dot) folders and files, e.g. `.ipynb_checkpoints` or macOS `._x.JPEG`, are never classes or samples."""
    return not name.startswith(".")


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder that ignores hidden folders and files, and never lets a bad image end a run.

    Samples are `(transform(PIL RGB image), class index)`. An empty (0-byte) file is found when the folder is
    scanned; an unreadable one (truncated JPEG, not an image) when it is loaded. By default such a file is skipped:
    the sample is replaced by the next readable image of the split (so every batch keeps its size), a warning names
    the file once, and the file is recorded (in `skipped` and, once the run directory exists, in `skip_log`, one
    path a line, shared by loader workers and processes). With `strict=True` the first one raises UsageError naming
    the file instead.
    """

    def __init__(self, root: Path, transform: Callable | None = None, strict: bool = False):
        self.strict = strict
        self.skipped: list[str] = []
        self.skip_log: Path | None = None
        self._root = Path(root)
        super().__init__(str(root), transform=transform, is_valid_file=self._is_sample)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and _visible(e.name))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}

    def _is_sample(self, path: str) -> bool:
        parts = Path(path).relative_to(self._root).parts
        if not all(_visible(part) for part in parts) or not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False
        if os.path.getsize(path) == 0:
            self._bad(path, "empty file")
            return False
        return True

    def _bad(self, path: str, reason: str) -> None:
        if self.strict:
            raise UsageError(f"unreadable image {path} ({reason}); replace or remove it, or set strict_data: false "
                             "to skip such files")
        if path in self.skipped:
            return
        self.skipped.append(path)
        print(f"warning: skipped unreadable image {path} ({reason})", file=sys.stderr)
        if self.skip_log is not None:
            append_text(self.skip_log, path + "\n")  # one short append per file: atomic across processes

    def __getitem__(self, index: int) -> tuple[object, int]:
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)  # opens and decodes (convert to RGB): a truncated file fails here
            except (OSError, SyntaxError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
                self._bad(path, one_line(err) or type(err).__name__)
                continue
            return (self.transform(image) if self.transform is not None else image), target
        raise UsageError(f"no readable image in {self.root}; check the data folder")


def skipped_images(bundle: DataBundle) -> list[str]:
    """Every image the bundle's folders skipped (sorted, each once): this process's and its log's."""
    found: set[str] = set()
    for dataset in (bundle.train, bundle.test):
        if isinstance(dataset, CheckedImageFolder):
            found.update(dataset.skipped)
            if dataset.skip_log is not None and dataset.skip_log.exists():
                found.update(line for line in dataset.skip_log.read_text().splitlines() if line)
    return sorted(found)


def log_skipped_images(bundle: DataBundle, path: Path) -> None:
    """Record skipped images in `path` from now on (loader workers and other processes too), with those so far."""
    for dataset in (bundle.train, bundle.test):
        if isinstance(dataset, CheckedImageFolder):
            dataset.skip_log = path
            if dataset.skipped:
                append_text(path, "".join(p + "\n" for p in dataset.skipped))


def _imagenet_bundle(data_dir: Path, img_size: int, augment: bool, strict: bool = False) -> DataBundle:
    """``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` with timm-style transforms."""
    class_lists = {}
    for split in ("train", "val"):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            raise UsageError(
                f"dataset 'imagenet': no {split}/ folder under {data_dir} "
                f"(expected {split_dir}/<class>/*.JPEG); pass --data-dir DIR"
            )
        class_lists[split] = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    if class_lists["train"] != class_lists["val"]:
        only_train = sorted(set(class_lists["train"]) - set(class_lists["val"]))[:3]
        only_val = sorted(set(class_lists["val"]) - set(class_lists["train"]))[:3]
        raise UsageError(
            f"dataset 'imagenet': class folders differ between {data_dir / 'train'} and {data_dir / 'val'} "
            f"(only in train: {only_train}, only in val: {only_val}); make both hold the same classes"
        )
    eval_tf = _imagenet_eval_transform(img_size)
    datasets = {}
    for split, transform in (
        ("train", _imagenet_train_transform(img_size) if augment else eval_tf),
        ("val", eval_tf),
    ):
        try:
            datasets[split] = CheckedImageFolder(data_dir / split, transform=transform, strict=strict)
        except (FileNotFoundError, OSError) as err:
            raise UsageError(f"dataset 'imagenet': {one_line(err)} (in {data_dir / split})") from err
    return DataBundle(datasets["train"], datasets["val"], len(datasets["train"].classes), 3, img_size)


def _imagenet_eval_transform(img_size: int) -> Callable:
    """timm eval transform: resize shorter side to img_size / 0.875, center crop, normalize."""
    from timm.data import create_transform

    return create_transform(
        img_size, is_training=False, crop_pct=_IMAGENET_CROP_PCT, interpolation="bilinear"
    )


def _imagenet_train_transform(img_size: int) -> Callable:
    """RandomResizedCrop (timm's default scale/ratio) + horizontal flip, drawing from torch's RNG.

    timm's own train transform draws its crop from Python's ``random`` module, so it is rebuilt here
    with torchvision ops to keep all augmentation randomness on torch's global RNG.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return v2.Compose(
        [
            v2.RandomResizedCrop(
                img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=v2.InterpolationMode.BILINEAR
            ),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD)),
        ]
    )
