"""ImageNet, or any image folder tree `DIR/train/<class>/*` + `DIR/val/<class>/*`: a PIL pipeline with loader
workers, timm-style transforms, and unreadable images skipped and recorded instead of ending a run."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from greedy.datasets.source import DataBundle, DatasetInfo, DataSource, register_dataset
from greedy.datasets.transforms import Stats, imagenet_eval_transform, imagenet_train_transform
from greedy.errors import UsageError, one_line
from greedy.files import append_text

IMAGENET_DEFAULT_SIZE = 224


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

    def subset(self, indices: Sequence[int], transform: Callable | None) -> CheckedImageFolder:
        """The samples at `indices` (into `samples`), read with `transform`: a shallow copy that shares the scan
        (classes, skipped files, skip_log) and leaves this folder as it is. For a validation split held out of a
        training folder (`val_split`)."""
        part = copy.copy(self)
        part.samples = [self.samples[i] for i in indices]
        part.imgs = part.samples
        part.targets = [target for _, target in part.samples]
        part.transform = transform
        return part


def skipped_images(bundle: DataBundle) -> list[str]:
    """Every image the bundle's folders skipped (sorted, each once): this process's and its log's."""
    found: set[str] = set()
    for dataset in (bundle.train, bundle.test, bundle.val):
        if isinstance(dataset, CheckedImageFolder):
            found.update(dataset.skipped)
            if dataset.skip_log is not None and dataset.skip_log.exists():
                found.update(line for line in dataset.skip_log.read_text().splitlines() if line)
    return sorted(found)


def log_skipped_images(bundle: DataBundle, path: Path) -> None:
    """Record skipped images in `path` from now on (loader workers and other processes too), with those so far."""
    for dataset in (bundle.train, bundle.test, bundle.val):
        if isinstance(dataset, CheckedImageFolder):
            dataset.skip_log = path
            if dataset.skipped:
                append_text(path, "".join(p + "\n" for p in dataset.skipped))


def class_folders(data_dir: Path, dataset: str) -> list[str]:
    """The class folders of ``data_dir/train`` and ``data_dir/val``, which must both exist and hold the same
    classes; raises UsageError naming what differs."""
    class_lists = {}
    for split in ("train", "val"):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            raise UsageError(
                f"dataset '{dataset}': no {split}/ folder under {data_dir} "
                f"(expected {split_dir}/<class>/*.JPEG); pass --data-dir DIR"
            )
        class_lists[split] = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    if class_lists["train"] != class_lists["val"]:
        only_train = sorted(set(class_lists["train"]) - set(class_lists["val"]))[:3]
        only_val = sorted(set(class_lists["val"]) - set(class_lists["train"]))[:3]
        raise UsageError(
            f"dataset '{dataset}': class folders differ between {data_dir / 'train'} and {data_dir / 'val'} "
            f"(only in train: {only_train}, only in val: {only_val}); make both hold the same classes"
        )
    return class_lists["train"]


def read_image_folders(data_dir: Path, img_size: int, augment: bool, strict: bool, stats: Stats) -> DataBundle:
    """``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` with timm-style transforms, normalized with
    `stats` (per-channel (mean, std) for values in [0, 1]: the config's, or the registered ImageNet statistics, as
    the factory resolves them)."""
    class_folders(data_dir, "imagenet")
    eval_tf = imagenet_eval_transform(img_size, stats)
    datasets = {}
    for split, transform in (
        ("train", imagenet_train_transform(img_size, stats) if augment else eval_tf),
        ("val", eval_tf),
    ):
        try:
            datasets[split] = CheckedImageFolder(data_dir / split, transform=transform, strict=strict)
        except (FileNotFoundError, OSError) as err:
            raise UsageError(f"dataset 'imagenet': {one_line(err)} (in {data_dir / split})") from err
    return DataBundle(datasets["train"], datasets["val"], len(datasets["train"].classes), 3, img_size, *stats)


register_dataset("imagenet", DataSource(DatasetInfo(1000, 3, IMAGENET_DEFAULT_SIZE), read_image_folders,
                                        (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)), in_memory=False))
