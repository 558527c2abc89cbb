"""Random images (torchvision's FakeData), 10 classes: for timing and tests, no file to read."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2

from greedy.datasets.source import DatasetInfo, DataSource, RawData, register_dataset

_FAKE_TRAIN_SIZE, _FAKE_TEST_SIZE, _FAKE_TEST_OFFSET = 512, 128, 1_000_000


def read_fake(data_dir: Path, download: bool, img_size: int | None) -> RawData:
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
    return RawData(*splits, num_classes=10)


register_dataset("fake", DataSource(DatasetInfo(10, 3, 32), read_fake, files=False))
