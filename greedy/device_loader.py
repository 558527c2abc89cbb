"""Device-resident in-memory datasets: whole-batch crop + flip on the accelerator, no DataLoader.

The fastest public CIFAR-10 trainers (airbench, hlb-CIFAR10) keep the data set on the GPU and augment whole
batches with tensor indexing. :class:`DeviceLoader` does that for every in-memory dataset (digits,
Fashion-MNIST, CIFAR-10/100, fake) and for the frozen-prefix feature cache:

* the images go to the device once, as **uint8** when that is exact (integer pixels at the native size, where
  normalizing a batch on the fly gives bit for bit the float32 tensor the DataLoader path serves) and as the
  normalized **float32** tensor otherwise (a resized image is not integer; bf16 would round it);
* each epoch draws a permutation from a generator seeded by (seed, epoch), the same on every process, and each
  process takes its own disjoint slices of it, laid out as accelerate lays out batches (`even_batches`), so that
  `Accelerator.gather_for_metrics` drops the padding of the last batch;
* each sample gets its **own** random crop (zero padding in normalized space, offsets uniform over the
  (2p+1)^2 positions) and horizontal flip (probability 1/2), drawn from a generator seeded by
  (seed, epoch, process). `torchvision.transforms.v2` on a batch would draw one crop for the whole batch.

Everything random is a function of (seed, epoch, process index), so a run resumed at an epoch boundary sees the
same batches as an uninterrupted one. The loader takes part in accelerate's gradient accumulation and
`gather_for_metrics` through accelerate's own `DataLoaderStateMixin`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState

_MIX = 0x9E3779B97F4A7C15  # a 64-bit odd constant: distinct (seed, epoch, rank) give distinct generator seeds


def _generator_seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * _MIX + int(p) + 1) % (2**63 - 1)
    return value


@dataclass(frozen=True)
class Normalization:
    """``(x / max_value - mean) / std`` per channel, computed in float32 as ``x * scale + shift`` (one fused op).

    The one normalization of the in-memory datasets: `greedy.data` materializes the DataLoader path's float32
    tensors with it, and the device path applies it to uint8 batches, so both see the same values bit for bit.
    `x`: ``B x C x H x W`` (or ``B x C x H*W``), any real dtype; returns float32 of the same shape.
    """

    max_value: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _affine: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (device, dim) -> tensors

    def affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each ``1 x C x 1 x 1`` float32, computed in float64 and rounded once."""
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = 1.0 / (self.max_value * std)
        shift = -torch.tensor(self.mean, dtype=torch.float64) / std
        return tuple(t.to(torch.float32).view(1, -1, 1, 1).to(device) for t in (scale, shift))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dim())
        if key not in self._affine:
            self._affine[key] = tuple(t.view(1, -1, *[1] * (x.dim() - 2)) for t in self.affine(x.device))
        scale, shift = self._affine[key]
        return torch.addcmul(shift, x if x.dtype == torch.uint8 else x.to(torch.float32), scale)


class CropFlip:
    """The paper's CIFAR augmentation drawn per sample over a whole batch: zero padding `padding` (0 in normalized
    space: the mean colour), a random crop back to ``H x W`` (offsets uniform over the (2p+1)^2 positions) and a
    horizontal flip with probability 1/2, i.e. torchvision's ``RandomCrop(size, padding)`` then
    ``RandomHorizontalFlip()`` with every sample its own draw. Paper: Belilovsky et al. (2019), after He et al. (2016).

    The (2p+1)^2 x 2 possible source maps are tabulated once (flat source index and validity per output pixel), so
    a batch costs one table lookup, one gather and one fused normalize-and-mask.
    """

    def __init__(self, height: int, width: int, padding: int, device: torch.device | str = "cpu"):
        self.height, self.width, self.padding = height, width, padding
        side = 2 * padding + 1
        dy, dx, flip = torch.meshgrid(torch.arange(side) - padding, torch.arange(side) - padding, torch.arange(2),
                                      indexing="ij")
        self.draws = torch.stack([dy.flatten(), dx.flatten(), flip.flatten()], 1)  # K x 3, K = 2 (2p+1)^2
        rows = torch.arange(height)[None, :] + self.draws[:, :1]  # K x H
        cols = torch.arange(width)[None, :] + self.draws[:, 1:2]  # K x W
        cols = torch.where(self.draws[:, 2:].bool(), cols.flip(1), cols)
        valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
        self.index = index.flatten(1).to(device)  # K x H*W
        self.valid = valid.flatten(1).to(torch.float32).to(device)  # K x H*W
        self.draws = self.draws.to(device)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """One table row per sample, ``B`` long, uniform over the 2 (2p+1)^2 (row offset, column offset, flip)."""
        return torch.randint(0, len(self.index), (batch,), generator=generator, device=self.index.device)

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 normalize: Normalization | None = None) -> torch.Tensor:
        """Augment ``x`` (``B x C x H x W``: uint8 pixels with `normalize`, else normalized floats) -> float32."""
        b, c, h, w = x.shape
        rows = self.draw(b, generator)
        out = x.flatten(2).gather(2, self.index.index_select(0, rows)[:, None, :].expand(b, c, h * w))
        out = normalize(out) if normalize is not None else out.to(torch.float32)
        return out.mul_(self.valid.index_select(0, rows)[:, None, :]).view(b, c, h, w)


class DeviceLoader(DataLoaderStateMixin):
    """Batches ``(x: B x C x H x W float32, y: B long)`` of a tensor dataset, sliced, augmented and normalized on
    `device`; see the module docstring.

    `images` (``N x C x H x W``, uint8 with `normalize`, else normalized float32) may live on the device or in
    RAM (a feature cache over its device budget): batches are gathered where they live and copied (non-blocking
    from pinned memory on CUDA). Raises ValueError when images and targets differ in length.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *, device: torch.device,
                 shuffle: bool, padding: int = 0, normalize: Normalization | None = None, seed: int = 0,
                 num_processes: int = 1, process_index: int = 0):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.padding, self.normalize, self.seed = shuffle, padding, normalize, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.crop_flip = CropFlip(*images.shape[-2:], padding, self.device) if padding else None
        self.epoch = 0
        self.gradient_state = GradientState()
        # what DataLoaderStateMixin.begin reads to set `remainder` for gather_for_metrics
        self.dataset, self._drop_last = images, False
        self.total_batch_size = batch_size * num_processes

    def set_epoch(self, epoch: int) -> None:
        """The permutation and the augmentation of the next pass are functions of (seed, epoch, process)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per process: every process the same number (the last global batch is padded)."""
        return -(-len(self.targets) // self.total_batch_size)

    def order(self) -> torch.Tensor:
        """This process's sample indices for the current epoch, in batch order (the padded layout of accelerate's
        `even_batches`: global batch b is processes' slices of B in turn, the last one wrapped around)."""
        n, total = len(self.targets), self.total_batch_size
        if self.shuffle:
            gen = torch.Generator().manual_seed(_generator_seed(self.seed, self.epoch))
            perm = torch.randperm(n, generator=gen)
        else:
            perm = torch.arange(n)
        pad = len(self) * total - n
        if pad and self.num_processes > 1:
            perm = torch.cat([perm, perm.repeat(-(-pad // n))[:pad]])
        per_batch = perm.split(total)
        rank = self.process_index
        return torch.cat([b[rank * self.batch_size:(rank + 1) * self.batch_size] for b in per_batch])

    def batch_sizes(self) -> list[int]:
        """The sizes of this process's batches in the current epoch, without reading any data."""
        return [len(b) for b in self.order().split(self.batch_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.begin()
        try:
            order = self.order().to(self.images.device)
            gen = None
            if self.crop_flip is not None:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(_generator_seed(self.seed, self.epoch, self.process_index, 1))
            batches = order.split(self.batch_size)
            for i, idx in enumerate(batches):
                x = self.images.index_select(0, idx).to(self.device, non_blocking=True)
                y = self.targets.index_select(0, idx.to(self.targets.device)).to(self.device, non_blocking=True)
                if self.crop_flip is not None:
                    x = self.crop_flip(x, gen, self.normalize)
                elif self.normalize is not None:
                    x = self.normalize(x)
                self.end_of_dataloader = i == len(batches) - 1
                yield x, y
        finally:
            self.end()
