"""Fashion-MNIST (Xiao et al. 2017): 28x28 grey images, 10 classes, in LeCun's idx format (plain or .gz)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from greedy.datasets.source import DatasetInfo, DataSource, RawData, check_labels, register_dataset
from greedy.errors import UsageError, one_line

FASHION_MNIST_STATS = ((0.2860,), (0.3530,))  # published, of the training split (pixel values in [0, 1])
_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
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


def read_fashion_mnist(data_dir: Path, download: bool, img_size: int | None) -> RawData:
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
    return RawData(tensors[0][:, None], tensors[1].long(), tensors[2][:, None], tensors[3].long(), num_classes=10)


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


register_dataset("fashion_mnist", DataSource(DatasetInfo(10, 1, 28), read_fashion_mnist, FASHION_MNIST_STATS,
                                             download=True))
