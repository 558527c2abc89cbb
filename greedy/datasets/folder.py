"""Your own images: `dataset: folder`, an image folder tree read once into memory.

    DIR/train/<class>/*.png|jpg|...  +  DIR/val/<class>/*   the val/ folder is the test split
    DIR/<class>/*                                           one folder: a fixed, stratified 20 % is the test split

Every image is decoded as RGB and resized to img_size x img_size (default 32) once, when the data set is read;
then it is an in-memory data set like CIFAR: normalized with its training split's per-channel statistics (or the
config's `norm_mean` / `norm_std`), crop + flip on the accelerator, `val_split` held out of the training split.
It is for data sets that fit in memory at that size (N x 3 x S x S bytes); a large tree streams as `imagenet`.
Hidden folders and files are ignored, as are files without an image extension; an empty or unreadable image is
skipped with a warning naming it (CheckedImageFolder).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.transforms import v2

from greedy.datasets.imagenet import CheckedImageFolder, class_folders
from greedy.datasets.source import DatasetInfo, DataSource, RawData, register_dataset, stratified_split
from greedy.errors import UsageError, one_line

FOLDER_DEFAULT_SIZE = 32
TEST_FRACTION, TEST_SEED = 0.2, 0  # one folder: the test split, fixed whatever the run's seed (as digits')


def _read(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(uint8 N x 3 x size x size images, int64 labels, class names) of one class-folder tree."""
    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    try:
        folder = CheckedImageFolder(root, transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise UsageError(f"dataset 'folder': {one_line(err)} (in {root}); put each class's images in "
                         f"{root}/<class>/") from err
    if not folder.samples:
        raise UsageError(f"dataset 'folder': no images in {root}/<class>/ (png, jpg, ...)")
    images = torch.stack([folder[i][0] for i in range(len(folder))])  # CheckedImageFolder decodes as RGB
    return images, torch.tensor(folder.targets, dtype=torch.int64), folder.classes


def read_folder(data_dir: Path, download: bool, img_size: int | None) -> RawData:
    """The tree under `data_dir` as RawData (values 0..255); raises UsageError for a missing or empty tree, or
    class folders that differ between train/ and val/."""
    size = img_size or FOLDER_DEFAULT_SIZE
    if not data_dir.is_dir():
        raise UsageError(f"dataset 'folder': {data_dir} does not exist; pass --data-dir DIR (DIR/train/<class>/* and "
                         "DIR/val/<class>/*, or DIR/<class>/*)")
    if (data_dir / "train").is_dir():
        class_folders(data_dir, "folder")  # refuses train/ and val/ with different classes, or no val/
        train_images, train_targets, classes = _read(data_dir / "train", size)
        test_images, test_targets, _ = _read(data_dir / "val", size)
    else:
        images, targets, classes = _read(data_dir, size)
        keep, held = stratified_split(targets, TEST_FRACTION, TEST_SEED)
        train_images, train_targets = images[keep], targets[keep]
        test_images, test_targets = images[held], targets[held]
    if len(classes) < 2:
        raise UsageError(f"dataset 'folder': {data_dir} holds {len(classes)} class folder; a classifier needs two "
                         "or more")
    return RawData(train_images, train_targets, test_images, test_targets, num_classes=len(classes))


def count_classes(data_dir: Path) -> int:
    """Class folders of the tree (those of train/ where there is one), counted without reading an image."""
    root = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    return sum(1 for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")) if root.is_dir() else 0


# DatasetInfo's 2 classes only stand in until the folders are counted (dataset_classes)
register_dataset("folder", DataSource(DatasetInfo(2, 3, FOLDER_DEFAULT_SIZE), read_folder,
                                      count_classes=count_classes))
