"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the python-pickle batches, read with an unpickler that runs no code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from greedy.datasets.source import DatasetInfo, DataSource, RawData, check_labels, register_dataset
from greedy.errors import UsageError, one_line

# Published per-channel statistics of the training sets (pixel values scaled to [0, 1]).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def read_cifar(data_dir: Path, download: bool, hundred: bool) -> RawData:
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
    return RawData(train_x, train_y, test_x, test_y, num_classes=classes)


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


def read_cifar10(data_dir: Path, download: bool, img_size: int | None) -> RawData:
    return read_cifar(data_dir, download, hundred=False)


def read_cifar100(data_dir: Path, download: bool, img_size: int | None) -> RawData:
    return read_cifar(data_dir, download, hundred=True)


register_dataset("cifar10", DataSource(DatasetInfo(10, 3, 32), read_cifar10, CIFAR10_STATS, download=True))
register_dataset("cifar100", DataSource(DatasetInfo(100, 3, 32), read_cifar100, CIFAR100_STATS, download=True))
