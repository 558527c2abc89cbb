"""Normalization and augmentation of images: the one normalization of the in-memory data sets, the paper's crop +
flip, and timm-style ImageNet transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip", "imagenet")
CROP_PADDING = 4  # the paper's crop_flip: zero padding before the random crop
IMAGENET_CROP_PCT = 0.875
_CHUNK = 4096  # images converted per step when materializing, bounds peak memory


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


def crop_flip_transform(size: int, padding: int = CROP_PADDING) -> v2.Compose:
    """The paper's CIFAR augmentation on one normalized tensor: pad 4 (with 0, the mean color), random crop, flip
    (the per-item path; `greedy.datasets.device.CropFlip` is the same augmentation over a batch)."""
    return v2.Compose([v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()])


def train_stats(images: torch.Tensor, max_value: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``images / max_value`` (std 0 becomes 1)."""
    x = images.to(torch.float64) / max_value
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def normalize(images: torch.Tensor, norm: Normalization, size: int) -> torch.Tensor:
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


Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel (mean, std) for pixel values in [0, 1]


def imagenet_eval_transform(img_size: int, stats: Stats | None = None) -> Callable:
    """timm eval transform: resize shorter side to img_size / 0.875, center crop, normalize with `stats` (default:
    timm's ImageNet mean and std). PIL image -> float32 3 x img_size x img_size."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    mean, std = stats or (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return create_transform(img_size, is_training=False, crop_pct=IMAGENET_CROP_PCT, interpolation="bilinear",
                            mean=tuple(mean), std=tuple(std))


def imagenet_train_transform(img_size: int, stats: Stats | None = None) -> Callable:
    """RandomResizedCrop (timm's default scale/ratio) + horizontal flip, drawing from torch's RNG, normalized with
    `stats` (default: timm's ImageNet mean and std). PIL image -> float32 3 x img_size x img_size.

    timm's own train transform draws its crop from Python's ``random`` module, so it is rebuilt here
    with torchvision ops to keep all augmentation randomness on torch's global RNG.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean, std = stats or (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                img_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=v2.InterpolationMode.BILINEAR
            ),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
