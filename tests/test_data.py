"""Tests for greedy.datasets: tiny datasets written in their true on-disk formats into tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from greedy.datasets import (
    AUGMENTATIONS,
    DATASETS,
    DataBundle,
    TensorImageDataset,
    create_datasets,
    create_loaders,
    skipped_images,
)
from greedy.errors import UsageError
from tests.helpers import cli, summary

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
FMNIST_STATS = ((0.2860,), (0.3530,))
FMNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def unnormalize_uint8(images: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """Invert the per-channel normalization and return the 0..255 pixels as uint8."""
    c = images.shape[1]
    mean = torch.tensor(stats[0]).view(1, c, 1, 1)
    std = torch.tensor(stats[1]).view(1, c, 1, 1)
    return (images * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """``n`` CIFAR rows (uint8 x 3072) with a known pattern that differs per image, channel and pixel."""
    idx = np.arange(3072)
    return np.stack([(idx * 7 + (offset + i) * 31) % 251 for i in range(n)]).astype(np.uint8)


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def keyed(as_bytes: bool, **fields: object) -> dict:
    """A batch dict with bytes keys (how Python 3 sees the real files with encoding='bytes') or str keys."""
    return {(k.encode() if as_bytes else k): v for k, v in fields.items()}


def write_cifar10(root: Path, as_bytes: bool = True) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Five 2-image train batches and a 3-image test batch in cifar-10-batches-py/."""
    folder = root / "cifar-10-batches-py"
    train_x, train_y = [], []
    for b in range(1, 6):
        x, y = cifar_rows(2, offset=10 * b), [(2 * b) % 10, (2 * b + 1) % 10]
        files = [b"img_%d_%d.png" % (b, i) for i in range(2)]
        batch = keyed(as_bytes, batch_label=b"training batch %d of 5" % b, labels=y, data=x, filenames=files)
        write_pickle(folder / f"data_batch_{b}", batch)
        train_x.append(x)
        train_y += y
    test_x, test_y = cifar_rows(3, offset=100), [9, 0, 5]
    test = keyed(
        as_bytes, batch_label=b"testing batch 1 of 1", labels=test_y, data=test_x, filenames=[b"t"] * 3
    )
    write_pickle(folder / "test_batch", test)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(
        folder / "batches.meta", keyed(as_bytes, num_cases_per_batch=2, label_names=names, num_vis=3072)
    )
    return np.concatenate(train_x), train_y, test_x, test_y


def write_idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def write_idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def fashion_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([5, 6, 7, 8], dtype=np.uint8),
    }


def fashion_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: (write_idx_images(a) if a.ndim == 3 else write_idx_labels(a)) for name, a in arrays.items()}


def write_fashion(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in fashion_files(arrays).items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload, mtime=0))
        else:
            (folder / name).write_bytes(payload)


def check_fashion(bundle: DataBundle, arrays: dict[str, np.ndarray]) -> None:
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 1, 28)
    assert bundle.train.images.shape == (6, 1, 28, 28)
    assert bundle.test.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(
        unnormalize_uint8(bundle.train.images, FMNIST_STATS)[:, 0], arrays[FMNIST_NAMES[0]]
    )
    np.testing.assert_array_equal(
        unnormalize_uint8(bundle.test.images, FMNIST_STATS)[:, 0], arrays[FMNIST_NAMES[2]]
    )
    assert bundle.train.targets.tolist() == arrays[FMNIST_NAMES[1]].tolist()
    assert [bundle.test[i][1] for i in range(4)] == arrays[FMNIST_NAMES[3]].tolist()


@pytest.fixture
def read_only():
    """Make folders read-only (mode 0555) for the test and restore them afterwards."""
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder)
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar10_round_trip(tmp_path: Path, as_bytes: bool) -> None:
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, as_bytes)
    bundle = create_datasets("cifar10", tmp_path)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 3, 32)
    assert len(bundle.train) == 10 and len(bundle.test) == 3
    image, label = bundle.train[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and label == train_y[3]
    assert bundle.train.targets.tolist() == train_y
    assert [bundle.test[i][1] for i in range(3)] == test_y

    pixels = unnormalize_uint8(bundle.train.images, CIFAR10_STATS)
    test_pixels = unnormalize_uint8(bundle.test.images, CIFAR10_STATS)
    # Row layout: 1024 red values, then green, then blue; each plane row-major 32x32.
    for n, c, r, col in [(0, 0, 0, 0), (3, 0, 1, 2), (4, 1, 5, 31), (9, 2, 31, 30), (7, 2, 17, 3)]:
        assert pixels[n, c, r, col] == train_x[n, c * 1024 + r * 32 + col]
    np.testing.assert_array_equal(pixels, train_x.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(test_pixels, test_x.reshape(-1, 3, 32, 32))


def test_cifar10_crop_flip(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    bundle = create_datasets("cifar10", tmp_path, augment="crop_flip")
    torch.manual_seed(0)
    first = [bundle.train[i][0] for i in range(10)]
    torch.manual_seed(0)
    again = [bundle.train[i][0] for i in range(10)]
    assert all(a.shape == (3, 32, 32) for a in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, bundle.train.images[i]) for i, a in enumerate(first))
    assert torch.equal(bundle.test[0][0], bundle.test.images[0])  # test set is never augmented


def test_cifar10_resize(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    bundle = create_datasets("cifar10", tmp_path, img_size=16)
    assert bundle.img_size == 16
    assert bundle.train.images.shape == (10, 3, 16, 16)
    assert bundle.test[0][0].shape == (3, 16, 16)


def test_cifar100(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    train_x, test_x = cifar_rows(4, 0), cifar_rows(2, 50)
    fine_train, fine_test = [0, 99, 42, 7], [13, 98]
    write_pickle(
        folder / "train",
        keyed(
            True,
            batch_label=b"training batch 1 of 1",
            fine_labels=fine_train,
            coarse_labels=[0, 19, 3, 1],
            data=train_x,
            filenames=[b"a.png"] * 4,
        ),
    )
    write_pickle(
        folder / "test",
        keyed(
            True,
            batch_label=b"testing batch 1 of 1",
            fine_labels=fine_test,
            coarse_labels=[5, 6],
            data=test_x,
            filenames=[b"b.png"] * 2,
        ),
    )
    fine_names, coarse_names = [b"c%d" % i for i in range(100)], [b"s%d" % i for i in range(20)]
    write_pickle(folder / "meta", keyed(True, fine_label_names=fine_names, coarse_label_names=coarse_names))
    bundle = create_datasets("cifar100", tmp_path)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (100, 3, 32)
    assert bundle.train.targets.tolist() == fine_train
    assert [bundle.test[i][1] for i in range(2)] == fine_test
    np.testing.assert_array_equal(
        unnormalize_uint8(bundle.train.images, CIFAR100_STATS), train_x.reshape(-1, 3, 32, 32)
    )


def test_cifar_corrupt_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="data_batch_3") as info:
        create_datasets("cifar10", tmp_path)
    assert "\n" not in str(info.value)


def test_cifar_label_out_of_range_names_the_file_the_record_and_the_value(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(batch, keyed(True, batch_label=b"training batch 3 of 5", labels=[6, 7, 10, 11], data=cifar_rows(4, 30),
                              filenames=[b"x"] * 4))
    with pytest.raises(UsageError) as info:
        create_datasets("cifar10", tmp_path)
    assert str(info.value) == (f"{batch}: label 10 at record 2 is outside 0..9 (CIFAR-10 has 10 classes); replace the "
                               "file with the original")


def test_cifar100_fine_label_out_of_range_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", keyed(True, fine_labels=[0, 99], coarse_labels=[0, 19], data=cifar_rows(2, 0)))
    write_pickle(folder / "test", keyed(True, fine_labels=[100], coarse_labels=[1], data=cifar_rows(1, 5)))
    with pytest.raises(UsageError) as info:
        create_datasets("cifar100", tmp_path)
    assert str(info.value).startswith(f"{folder / 'test'}: label 100 at record 0 is outside 0..99 (CIFAR-100 has 100 "
                                      "classes)")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_label_out_of_range_names_the_file_the_record_and_the_value(tmp_path: Path, gz: bool) -> None:
    arrays = fashion_arrays()
    arrays["t10k-labels-idx1-ubyte"] = np.array([5, 6, 12, 8], dtype=np.uint8)
    write_fashion(tmp_path, arrays, gz=gz)
    path = tmp_path / ("t10k-labels-idx1-ubyte.gz" if gz else "t10k-labels-idx1-ubyte")
    with pytest.raises(UsageError) as info:
        create_datasets("fashion_mnist", tmp_path)
    assert str(info.value) == (f"{path}: label 12 at record 2 is outside 0..9 (Fashion-MNIST has 10 classes); replace "
                               "the file with the original")


def test_a_corrupt_label_file_stops_train_py_in_one_line_exit_2(tmp_path: Path) -> None:
    arrays = fashion_arrays()
    arrays["train-labels-idx1-ubyte"] = np.array([0, 1, 2, 3, 200, 9], dtype=np.uint8)
    write_fashion(tmp_path / "data", arrays, gz=True)
    proc = cli("train.py", "-c", "configs/fashion_mnist_k2.yaml", "--data-dir", str(tmp_path / "data"), "--out-dir",
               str(tmp_path / "runs"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {tmp_path / 'data' / 'train-labels-idx1-ubyte.gz'}: label 200 at record 4 is "
                           "outside 0..9 (Fashion-MNIST has 10 classes); replace the file with the original\n")
    assert not (tmp_path / "runs").exists()  # refused before the run directory is made


class _Payload:
    """Unpickling this runs `touch marker` through os.system, as a crafted CIFAR batch would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["top-level", "inside-data"])
def test_cifar_crafted_batch_does_not_run_its_payload(tmp_path: Path, where: str) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    payload = _Payload(marker)
    write_pickle(batch, payload if where == "top-level" else {b"data": payload, b"labels": [0]})
    with pytest.raises(UsageError) as info:
        create_datasets("cifar10", tmp_path)
    assert not marker.exists()  # the callable named in the file never ran
    assert str(info.value) == (f"CIFAR batch {batch} refused: it names {os.system.__module__}.system, which a "
                               "CIFAR batch never holds (refused: reading it would run code from the data file); "
                               "replace it with the original file")


def test_cifar_wrong_row_length_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    write_pickle(batch, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UsageError) as info:
        create_datasets("cifar10", tmp_path)
    assert str(info.value) == (f"CIFAR batch {batch}: 'data' is uint8 of shape (2, 3000), not N rows of 3072 uint8 "
                               "pixels (3 x 32 x 32); re-download it")


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat-gz", "raw-gz", "raw-plain"])
def test_fashion_mnist_layouts_read_in_place(tmp_path: Path, read_only, layout: str) -> None:
    arrays = fashion_arrays(3)
    folder = tmp_path / "FashionMNIST" / "raw" if layout.startswith("raw") else tmp_path / "flat"
    write_fashion(folder, arrays, gz=layout.endswith("gz"))
    read_only(folder)  # nothing is written next to the data: the .gz files are read as they are
    check_fashion(create_datasets("fashion_mnist", tmp_path if layout.startswith("raw") else folder), arrays)


def test_fashion_mnist_two_folders_never_mix(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_fashion(tmp_path / str(seed), fashion_arrays(seed), gz=True)
    for seed in (0, 1, 0):
        check_fashion(create_datasets("fashion_mnist", tmp_path / str(seed)), fashion_arrays(seed))


def _damage(tmp_path: Path, name: str, payload: bytes, gz: bool) -> Path:
    write_fashion(tmp_path, fashion_arrays(), gz=gz)
    path = tmp_path / (f"{name}.gz" if gz else name)
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


GOOD_IMAGES = fashion_files(fashion_arrays())["t10k-images-idx3-ubyte"]


@pytest.mark.parametrize("gz, payload, message", [
    (False, struct.pack(">I", 2049) + GOOD_IMAGES[4:], "has magic number 0x00000801, not 0x00000803"),
    (True, struct.pack(">I", 0x0B03) + GOOD_IMAGES[4:], "has magic number 0x00000b03, not 0x00000803"),
    (False, GOOD_IMAGES[:-100], "holds 3036 values but its header announces 4 x 28 x 28 = 3136"),
    (False, GOOD_IMAGES[:10], "is 10 bytes, shorter than an idx header"),
], ids=["magic", "magic-in-gz", "short-data", "short-header"])
def test_fashion_mnist_bad_idx_names_the_file(tmp_path: Path, gz: bool, payload: bytes, message: str) -> None:
    path = _damage(tmp_path, "t10k-images-idx3-ubyte", payload, gz)
    with pytest.raises(UsageError) as info:
        create_datasets("fashion_mnist", tmp_path)
    assert str(info.value).startswith(f"{path} {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "is not a complete gzip file (EOFError"),
    (lambda b: b"garbage", "is not a complete gzip file (BadGzipFile"),
], ids=["truncated-gz", "not-gz"])
def test_fashion_mnist_bad_gz_names_the_file(tmp_path: Path, damage, message: str) -> None:
    write_fashion(tmp_path, fashion_arrays(), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UsageError) as info:
        create_datasets("fashion_mnist", tmp_path)
    assert str(info.value).startswith(f"{path} {message}")


# ----------------------------------------------------------------------------------------------
# ImageNet (ImageFolder layout)
# ----------------------------------------------------------------------------------------------

COLORS = {"n01440764": (200, 30, 60), "n01443537": (10, 220, 120)}


def write_image_folder(root: Path, classes: dict[str, tuple[int, int, int]] = COLORS) -> None:
    for split in ("train", "val"):
        for name, color in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 48), color).save(folder / f"{name}_{i}.png")


def test_imagenet_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    bundle = create_datasets("imagenet", tmp_path, img_size=32)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (2, 3, 32)
    assert len(bundle.train) == 6 and len(bundle.test) == 6
    labels = []
    for i in range(6):
        image, label = bundle.test[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        labels.append(label)
    assert labels == [0, 0, 0, 1, 1, 1]
    # Solid colors survive resize + center crop; undo the ImageNet normalization.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixel = (bundle.test[4][0][:, 16, 16] * std + mean) * 255
    assert torch.allclose(pixel, torch.tensor(COLORS["n01443537"], dtype=torch.float32), atol=1.0)


def test_image_folder_ignores_hidden_folders_and_files(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    for split in ("train", "val"):  # what notebooks and macOS leave behind
        hidden = tmp_path / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.new("RGB", (40, 48), (0, 0, 0)).save(hidden / "x.png")
        Image.new("RGB", (40, 48), (0, 0, 0)).save(tmp_path / split / "n01443537" / "._n01443537_0.png")
        nested = tmp_path / split / "n01440764" / ".thumbs"
        nested.mkdir()
        Image.new("RGB", (40, 48), (0, 0, 0)).save(nested / "t.png")
    bundle = create_datasets("imagenet", tmp_path, img_size=32)
    assert bundle.num_classes == 2 and bundle.train.classes == sorted(COLORS)
    assert len(bundle.train) == len(bundle.test) == 6
    assert [bundle.test[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]  # labels unchanged


def write_bad_images(root: Path) -> tuple[Path, Path]:
    """A truncated JPEG and a 0-byte .JPEG in the train split of an image folder."""
    write_image_folder(root)
    truncated = root / "train" / "n01440764" / "truncated.JPEG"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    empty = root / "train" / "n01443537" / "empty.JPEG"
    empty.write_bytes(b"")
    return truncated, empty


def test_image_folder_skips_and_reports_bad_images(tmp_path: Path, capsys) -> None:
    truncated, empty = write_bad_images(tmp_path)
    bundle = create_datasets("imagenet", tmp_path, img_size=32)
    assert len(bundle.train) == 7  # 6 good + the truncated one; the empty one is no sample
    items = [bundle.train[i] for i in range(len(bundle.train))]
    assert all(image.shape == (3, 32, 32) for image, _ in items)
    assert skipped_images(bundle) == sorted([str(truncated), str(empty)])
    err = capsys.readouterr().err
    assert f"warning: skipped unreadable image {truncated} (image file is truncated" in err
    assert f"warning: skipped unreadable image {empty} (empty file)" in err


def test_image_folder_strict_refuses_bad_images(tmp_path: Path) -> None:
    truncated, empty = write_bad_images(tmp_path)
    with pytest.raises(UsageError) as info:
        create_datasets("imagenet", tmp_path, img_size=32, strict_data=True)
    assert str(info.value) == (f"unreadable image {empty} (empty file); replace or remove it, or set "
                               "strict_data: false to skip such files")
    empty.unlink()
    bundle = create_datasets("imagenet", tmp_path, img_size=32, strict_data=True)
    with pytest.raises(UsageError, match=f"^unreadable image {truncated} \\(image file is truncated"):
        [bundle.train[i] for i in range(len(bundle.train))]


def test_imagenet_augment_is_seeded_by_torch(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    bundle = create_datasets("imagenet", tmp_path, img_size=32, augment="imagenet")
    torch.manual_seed(3)
    first = bundle.train[5]
    torch.manual_seed(3)
    again = bundle.train[5]
    assert first[0].shape == (3, 32, 32) and first[1] == 1
    assert torch.equal(first[0], again[0])


def test_imagenet_default_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    bundle = create_datasets("imagenet", tmp_path)
    assert bundle.img_size == 224
    assert bundle.train[0][0].shape == (3, 224, 224)


def test_imagenet_class_mismatch(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "val" / "n01440764").rename(tmp_path / "val" / "n99999999")
    with pytest.raises(UsageError, match="differ") as info:
        create_datasets("imagenet", tmp_path, img_size=32)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# digits, fake
# ----------------------------------------------------------------------------------------------


def test_digits_split_and_determinism() -> None:
    torch.manual_seed(1)
    first = create_datasets("digits", "unused")
    torch.manual_seed(2)
    second = create_datasets("digits")
    assert (len(first.train), len(first.test)) == (1437, 360)
    assert (first.num_classes, first.in_chans, first.img_size) == (10, 1, 8)
    assert first.train[0][0].shape == (1, 8, 8)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.targets, second.test.targets)
    assert set(first.test.targets.tolist()) == set(range(10))
    # normalized with the train statistics
    assert abs(first.train.images.mean().item()) < 1e-4
    assert abs(first.train.images.std(correction=0).item() - 1) < 1e-4


def test_fake_shapes() -> None:
    bundle = create_datasets("fake")
    assert (len(bundle.train), len(bundle.test)) == (512, 128)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 3, 32)
    image, label = bundle.train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    assert not torch.equal(bundle.train.images[:128], bundle.test.images)
    small = create_datasets("fake", img_size=16, augment="crop_flip")
    assert small.img_size == 16 and small.train[0][0].shape == (3, 16, 16)


def test_tensor_image_dataset_transform() -> None:
    images, targets = torch.arange(8.0).view(2, 1, 2, 2), torch.tensor([3, 4])
    ds = TensorImageDataset(images, targets, transform=lambda x: x * 2)
    image, label = ds[1]
    assert torch.equal(image, images[1] * 2) and label == 4 and len(ds) == 2


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


def assert_one_line_usage_error(info: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashion_mnist", "imagenet"])
def test_missing_directory(tmp_path: Path, dataset: str, monkeypatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as info:
        create_datasets(dataset, missing)
    assert_one_line_usage_error(info, str(missing), "--data-dir")


def test_unknown_dataset() -> None:
    with pytest.raises(UsageError) as info:
        create_datasets("mnist")
    assert_one_line_usage_error(info, "'mnist'", *DATASETS)


def test_unknown_augment() -> None:
    with pytest.raises(UsageError) as info:
        create_datasets("fake", augment="mixup")
    assert_one_line_usage_error(info, "'mixup'", *AUGMENTATIONS)


def test_augment_dataset_mismatch(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        create_datasets("fake", augment="imagenet")
    assert_one_line_usage_error(info, "imagenet", "crop_flip")
    with pytest.raises(UsageError) as info:
        create_datasets("imagenet", tmp_path, augment="crop_flip")
    assert_one_line_usage_error(info, "crop_flip", "imagenet")


def test_bad_img_size() -> None:
    with pytest.raises(UsageError):
        create_datasets("fake", img_size=0)


# ----------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_bundle() -> DataBundle:
    return create_datasets("fake")


def test_loader_batches(fake_bundle: DataBundle) -> None:
    train, test = create_loaders(fake_bundle, 100, eval_batch_size=50)
    sizes = [x.shape[0] for x, _ in train]
    assert sizes == [100] * 5 + [12]  # drop_last=False
    x, y = next(iter(train))
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [x.shape[0] for x, _ in test] == [50, 50, 28]


def test_test_loader_covers_test_set_once_in_order(fake_bundle: DataBundle) -> None:
    _, test = create_loaders(fake_bundle, 64, eval_batch_size=48)
    images = torch.cat([x for x, _ in test])
    targets = torch.cat([y for _, y in test])
    assert torch.equal(images, fake_bundle.test.images)
    assert torch.equal(targets, fake_bundle.test.targets)


def test_train_loader_shuffles_reproducibly(fake_bundle: DataBundle) -> None:
    train, _ = create_loaders(fake_bundle, 512)
    torch.manual_seed(0)
    [(x1, y1)] = list(train)
    torch.manual_seed(0)
    [(x2, _)] = list(train)
    [(x3, _)] = list(train)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, fake_bundle.train.images)
    assert not torch.equal(x2, x3)
    assert sorted(y1.tolist()) == sorted(fake_bundle.train.targets.tolist())


def test_loader_rejects_bad_batch_size(fake_bundle: DataBundle) -> None:
    with pytest.raises(UsageError):
        create_loaders(fake_bundle, 0)


def test_train_cli_skips_bad_images_and_strict_refuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truncated, empty = write_bad_images(data)
    args = ["-c", "configs/digits_k2.yaml", "--dataset", "imagenet", "--data-dir", str(data), "--img-size", "16",
            "--widths", "8,8", "--downsample", "2", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--out-dir", str(tmp_path / "runs")]
    # loader workers find the truncated file: its path reaches summary.json through the run's skip log
    proc = cli("train.py", *args, "--name", "skip", "--num-workers", "1")
    assert summary(tmp_path / "runs" / "skip")["skipped_images"] == sorted([str(truncated), str(empty)])
    assert "skipped 2 unreadable image(s)" in proc.stdout
    strict = cli("train.py", *args, "--name", "strict", "--strict-data", check=False)
    assert strict.returncode == 2
    assert strict.stderr == (f"error: unreadable image {empty} (empty file); replace or remove it, or set "
                             "strict_data: false to skip such files\n")
    assert not (tmp_path / "runs" / "strict").exists()
    empty.unlink()
    strict = cli("train.py", *args, "--name", "strict", "--strict-data", "--num-workers", "1", check=False)
    assert strict.returncode == 2
    assert strict.stderr.startswith(f"error: unreadable image {truncated} (image file is truncated")
    assert strict.stderr.count("\n") == 1  # one line, no traceback from the loader worker
