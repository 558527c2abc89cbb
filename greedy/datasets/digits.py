"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): embedded in scikit-learn, no file to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from greedy.datasets.source import DatasetInfo, DataSource, RawData, register_dataset


def read_digits(data_dir: Path, download: bool, img_size: int | None) -> RawData:
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 split (independent of the run seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # N x 1 x 8 x 8, values 0..16
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)]
    return RawData(*tensors, num_classes=10, max_value=16.0)


register_dataset("digits", DataSource(DatasetInfo(10, 1, 8), read_digits, files=False))
