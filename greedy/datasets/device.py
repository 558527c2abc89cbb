"""Device-resident in-memory datasets: whole-batch crop + flip on the accelerator, no DataLoader.

The fastest public CIFAR-10 trainers (airbench, hlb-CIFAR10) keep the data set on the GPU and augment whole
batches with tensor indexing. :class:`DeviceLoader` does that for every in-memory dataset (digits,
Fashion-MNIST, CIFAR-10/100, fake) and for the frozen-prefix feature cache:

* the images go to the device once, as the normalized **float32** tensor the DataLoader path serves (exact by
  construction). uint8 pixels would take a quarter of the memory (CIFAR-10's training set: 150 MB instead of
  615 MB) but every batch would then need a normalize and a padding-mask pass after the gather: measured 2-3x
  slower on a CPU core (docs/PERFORMANCE.md); bf16 would round the normalized values;
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

import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState

_MIX = 0x9E3779B97F4A7C15  # a 64-bit odd constant: distinct (seed, epoch, rank) give distinct generator seeds


def _generator_seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * _MIX + int(p) + 1) % (2**63 - 1)
    return value


class CropFlip:
    """The paper's CIFAR augmentation drawn per sample over a whole batch: zero padding `padding` (0 in normalized
    space: the mean colour), a random crop back to ``H x W`` (offsets uniform over the (2p+1)^2 positions) and a
    horizontal flip with probability 1/2, i.e. torchvision's ``RandomCrop(size, padding)`` then
    ``RandomHorizontalFlip()`` with every sample its own draw. Paper: Belilovsky et al. (2019), after He et al. (2016).

    The 2 (2p+1)^2 possible source maps are tabulated once: for every output pixel, the flat index of the input
    pixel it reads, or ``H*W`` where it reads the padding. Images are stored with one extra zero per channel at
    index ``H*W`` (`store`), so a batch costs one table lookup and one gather: no padded copy, no mask.
    """

    def __init__(self, height: int, width: int, padding: int, device: torch.device | str = "cpu"):
        self.height, self.width, self.padding = height, width, padding
        side = 2 * padding + 1
        dy, dx, flip = torch.meshgrid(torch.arange(side) - padding, torch.arange(side) - padding, torch.arange(2),
                                      indexing="ij")
        draws = torch.stack([dy.flatten(), dx.flatten(), flip.flatten()], 1)  # K x 3, K = 2 (2p+1)^2
        rows = torch.arange(height)[None, :] + draws[:, :1]  # K x H
        cols = torch.arange(width)[None, :] + draws[:, 1:2]  # K x W
        cols = torch.where(draws[:, 2:].bool(), cols.flip(1), cols)
        valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
        self.index = torch.where(valid, index, height * width).flatten(1).to(device)  # K x H*W
        self.draws = draws.to(device)  # (row offset, column offset, flipped) of each table row

    def store(self, images: torch.Tensor, device: torch.device | str, chunk: int = 4096) -> torch.Tensor:
        """``N x C x H x W`` images as ``N x C x (H*W + 1)`` on `device`, the last entry of every channel 0 (the
        padding the tables point at), copied in chunks (no second full copy on the device)."""
        n, c = images.shape[:2]
        out = torch.zeros(n, c, self.height * self.width + 1, dtype=images.dtype, device=device)
        for start in range(0, n, chunk):
            out[start:start + chunk, :, :-1].copy_(images[start:start + chunk].flatten(2))
        return out

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """One table row per sample, ``B`` long, uniform over the 2 (2p+1)^2 (row offset, column offset, flip)."""
        return torch.randint(0, len(self.index), (batch,), generator=generator, device=self.index.device)

    def __call__(self, stored: torch.Tensor, generator: torch.Generator,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a batch of `store`d images (``B x C x (H*W + 1)``) -> a new ``B x C x H x W`` tensor. `index`, a
        ``B' x H*W`` long buffer with B' >= B, is reused for the gather's index (saves an allocation a batch)."""
        b, c = stored.shape[:2]
        rows = self.draw(b, generator)
        index = torch.index_select(self.index, 0, rows, out=index[:b]) if index is not None else \
            self.index.index_select(0, rows)
        return stored.gather(2, index[:, None, :].expand(b, c, index.shape[1])).view(b, c, self.height, self.width)


class DeviceLoader(DataLoaderStateMixin):
    """Batches ``(x: B x C x H x W, y: B long)`` of a tensor dataset, sliced and augmented on `device`; see the
    module docstring.

    `images` (``N x C x H x W``: normalized float32 images, or cached features in their storage dtype) go to
    `device` once, at the first use; with `resident=False` and no augmentation they stay where they are (a feature
    cache over its device budget): batches are then gathered in RAM and copied (non-blocking from pinned memory on
    CUDA). Raises ValueError when images and targets differ in length.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *, device: torch.device,
                 shuffle: bool, padding: int = 0, seed: int = 0, num_processes: int = 1, process_index: int = 0,
                 resident: bool = True):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.batch_size, self.device = batch_size, torch.device(device)
        self.crop_flip = CropFlip(*images.shape[-2:], padding, self.device) if padding else None
        self._source, self._images, self.resident = images, None, resident
        self.targets = targets
        self.shuffle, self.seed = shuffle, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch = 0
        self.gradient_state = GradientState()
        # what DataLoaderStateMixin.begin reads to set `remainder` for gather_for_metrics
        self.dataset, self._drop_last = targets, False
        self.total_batch_size = batch_size * num_processes

    @property
    def images(self) -> torch.Tensor:
        """What batches are gathered from: the images on the device (crop + flip: their padded copy), or as given
        (`resident=False`), made at the first use, so that a loader built and never read (the train loader beside
        the test loader of a final evaluation) copies nothing."""
        if self._images is None:
            if self.crop_flip is not None:
                self._images = self.crop_flip.store(self._source, self.device)
            else:
                self._images = self._source.to(self.device) if self.resident else self._source
            self._source = None
        return self._images

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
            # per-epoch buffers for what does not leave the loader: on a CPU a fresh large tensor a batch can cost
            # more in page faults (the allocator hands freed memory back to the OS) than the gather itself
            rows = self.images.new_empty((self.batch_size, *self.images.shape[1:])) if self.crop_flip else None
            index = self.crop_flip.index.new_empty((self.batch_size, self.crop_flip.index.shape[1])) \
                if self.crop_flip else None
            for i, idx in enumerate(batches):
                y = self.targets.index_select(0, idx.to(self.targets.device)).to(self.device, non_blocking=True)
                if self.crop_flip is not None:
                    x = self.crop_flip(torch.index_select(self.images, 0, idx, out=rows[:len(idx)]), gen, index)
                else:
                    x = self.images.index_select(0, idx).to(self.device, non_blocking=True)
                self.end_of_dataloader = i == len(batches) - 1
                yield x, y
        finally:
            self.end()
