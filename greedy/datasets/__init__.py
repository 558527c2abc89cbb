"""Data: the registered data sets, their normalization and augmentation, and the one factory of splits and loaders.

    source.py         DataBundle (what a run trains on), DataSource (a registered data set), RawData, label checks
    digits.py, fashion_mnist.py, cifar.py, imagenet.py, folder.py, fake.py   one reader per data set, each registered
    transforms.py     normalization, the paper's crop + flip, timm-style ImageNet transforms
    device.py         DeviceLoader: the data set on the accelerator, batches augmented there
    factory.py        create_datasets, create_loaders: the one entry point

A new data set is one file here (a reader returning RawData, or a DataBundle of image folders) that calls
`register_dataset(name, DataSource(...))`, plus its import below.
"""

# the readers register their data sets in this order (the order `--help` and errors list them)
from greedy.datasets import digits, fashion_mnist, cifar, imagenet, folder, fake  # noqa: F401, I001
from greedy.datasets.source import DataBundle, DatasetInfo, DataSource, RawData, TensorImageDataset, register_dataset
from greedy.datasets.device import DeviceLoader
from greedy.datasets.factory import (
    create_datasets,
    create_loaders,
    dataset_classes,
    dataset_info,
    dataset_stats,
    default_workers,
    device_data_supported,
    device_loader,
)
from greedy.datasets.imagenet import CheckedImageFolder, log_skipped_images, skipped_images
from greedy.datasets.transforms import AUGMENTATIONS, CROP_PADDING, Normalization, crop_flip_transform
from greedy.registry import DATASETS

__all__ = [
    "AUGMENTATIONS", "CROP_PADDING", "DATASETS", "CheckedImageFolder", "DataBundle", "DataSource", "DatasetInfo",
    "DeviceLoader", "Normalization", "RawData", "TensorImageDataset", "create_datasets", "create_loaders",
    "crop_flip_transform", "dataset_classes", "dataset_info", "dataset_stats", "default_workers",
    "device_data_supported", "device_loader", "log_skipped_images", "register_dataset", "skipped_images",
]
