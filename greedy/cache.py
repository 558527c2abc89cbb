"""Frozen-prefix feature cache: a greedy stage trains block j + head j on features computed once.

Stage j's inputs are the frozen prefix's outputs for the whole train and test sets. They are computed
once from the images (in eval mode, without a graph), kept in RAM when they fit under the budget and
otherwise in a memory-mapped file inside the run directory, and advanced to stage j+1 by one forward
of block j over the cached features, never from the images again.

Storage dtype (`cache_dtype: auto`): the dtype block j computes in. Under bf16/fp16 mixed precision
the block's first arithmetic op (its conv, after an exact downsampling) casts its input to that dtype
anyway, so storing it so loses nothing; in fp32 runs the features stay fp32, so cached training is the
uncached training up to the rounding of the prefix's batch composition.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from greedy.datasets import DataBundle, device_loader
from greedy.datasets.device import DeviceLoader
from greedy.errors import UsageError
from greedy.files import preallocate, writing
from greedy.registry import OBJECTIVES
from greedy.schema import Config

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

AUGMENTATION_WARNING = (
    "warning: cache: on with augment '{augment}': augmentation cannot be applied before a frozen prefix whose "
    "outputs are cached; training on cached features of the un-augmented images (pass --cache off to augment)"
)


def autocast_dtype(cfg: Config) -> torch.dtype | None:
    """The dtype mixed precision computes in (bf16, fp16), or None without it."""
    return DTYPES.get(cfg.mixed_precision)


def cache_enabled(cfg: Config, say: Callable[[str], None] = print) -> bool:
    """Whether the greedy stages train on cached features (auto: iff the train transform is deterministic and the
    objective does not read the input images, as InfoPro's does at every module)."""
    if cfg.cache == "off" or OBJECTIVES[cfg.objective].needs_input:  # config refuses cache on with such objectives
        return False
    if cfg.mode != "greedy":
        if cfg.cache == "on":
            say(f"cache: on applies to greedy mode only; {cfg.mode} trains from the images")
        return False
    if cfg.cache == "auto":
        return cfg.augment == "none"
    if cfg.augment != "none":
        say(AUGMENTATION_WARNING.format(augment=cfg.augment))
    return True


def computed_dtype(autocast: Callable = contextlib.nullcontext, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype a conv really computes in under `autocast` on `device` (measured with a 1x1 conv, not assumed)."""
    x = torch.zeros(1, 1, 1, 1, device=device)
    with torch.no_grad(), autocast():
        return torch.nn.functional.conv2d(x, x).dtype


def cache_dtype(cfg: Config, compute: torch.dtype | None = None) -> torch.dtype:
    """The storage dtype: the config's, or (auto) `compute`, the dtype the block computes in (default: the one
    mixed precision names; `FeatureCache.for_run` passes the measured one)."""
    if cfg.cache_dtype != "auto":
        return DTYPES[cfg.cache_dtype]
    return compute or autocast_dtype(cfg) or torch.float32


class FeatureDataset(Dataset):
    """(features, targets) served a whole batch at a time (`__getitems__`: one gather, no per-item collate)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.features.index_select(0, idx), self.targets.index_select(0, idx)


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """FeatureDataset.__getitems__ already returns the batch."""
    return batch


class ToFloat(nn.Module):
    """The prefix of a cached stage whose features are stored in a narrower dtype than the block computes in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


@dataclass
class _Split:
    features: torch.Tensor  # N x C x H x W, in RAM or memory-mapped
    targets: torch.Tensor
    path: Path | None  # the backing file of a memory-mapped split


class FeatureCache:
    """The inputs of greedy stage `stage` for the train and test sets; see the module docstring."""

    def __init__(self, directory: Path, *, dtype: torch.dtype = torch.float32, budget_gb: float = 4.0,
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32, rank: int = 0,
                 batch_size: int = 256, autocast: Callable = contextlib.nullcontext,
                 say: Callable[[str], None] = print, on_device: bool = False, device_budget_gb: float = 4.0,
                 seed: int = 0, num_processes: int = 1):
        self.directory = Path(directory)
        self.dtype = dtype
        self.budget = int(budget_gb * 2**30)
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype  # what the block computes in: fp32, or the autocast dtype
        self.rank = rank  # every process builds the whole cache; memory-mapped files are per process
        self.batch_size = batch_size
        self.autocast = autocast
        self.say = say
        self.stage: int | None = None  # the 0-based greedy stage whose inputs are held
        self.seconds = 0.0  # wall time of the last build or advance
        self.splits: dict[str, _Split] = {}
        # device_data: features served by DeviceLoaders (each process its shard of a (seed, epoch) permutation),
        # held in GPU memory when they fit under the device budget
        self.on_device, self.device_budget = on_device, int(device_budget_gb * 2**30)
        self.seed, self.num_processes = seed, num_processes

    @classmethod
    def for_run(cls, cfg: Config, accelerator, directory: Path, say: Callable[[str], None] = print) -> FeatureCache:
        """A cache with the run's dtype, budget, device, precision and process rank."""
        compute = computed_dtype(accelerator.autocast, accelerator.device)
        return cls(directory, dtype=cache_dtype(cfg, compute), budget_gb=cfg.cache_budget_gb, device=accelerator.device,
                   compute_dtype=compute, rank=accelerator.process_index,
                   batch_size=cfg.eval_batch_size or max(cfg.batch_size, 256), autocast=accelerator.autocast, say=say,
                   on_device=cfg.on_device, device_budget_gb=cfg.cache_device_gb, seed=cfg.seed,
                   num_processes=accelerator.num_processes)

    # building and advancing
    def build(self, prefix: nn.Module, data: DataBundle, stage: int, num_workers: int = 0) -> FeatureCache:
        """Stage `stage`'s inputs from the images: one pass of the frozen prefix over train and test sets."""
        t0 = time.perf_counter()
        self._remove_stale_files()
        if self.on_device:  # the images are already on the device: no DataLoader
            loaders = {name: device_loader(ds, self.batch_size, shuffle=False, device=self.device)
                       for name, ds in (("train", data.train), ("test", data.test))}
        else:
            loaders = {name: DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=num_workers)
                       for name, ds in (("train", data.train), ("test", data.test))}
        sample = data.train[0][0].unsqueeze(0).to(self.device)
        shape = tuple(self._run(prefix, sample).shape[1:])
        self._fill(stage, shape, {n: (len(loader.dataset), self._from_loader(prefix, loader))
                                  for n, loader in loaders.items()})
        del loaders
        self._report("built", time.perf_counter() - t0)
        return self

    def advance(self, block: nn.Module) -> FeatureCache:
        """The next stage's inputs: one forward of the (now trained, frozen) block over this stage's features."""
        t0 = time.perf_counter()
        old = self.splits
        sample = old["train"].features[:1].to(self.device)
        shape = tuple(self._run(block, sample).shape[1:])
        self._fill(self.stage + 1, shape, {n: (len(s.targets), self._from_tensor(block, s)) for n, s in old.items()})
        self._release(old)
        self._report("advanced", time.perf_counter() - t0)
        return self

    @torch.no_grad()
    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) in eval mode, without a graph, under the run's autocast; the module's mode is kept."""
        was_training = module.training
        module.eval()
        try:
            with self.autocast():
                return module(x.float() if x.dtype != torch.float32 else x)
        finally:
            module.train(was_training)

    def _from_loader(self, prefix: nn.Module, loader):
        for x, y in loader:
            yield self._run(prefix, x.to(self.device)), torch.as_tensor(y)

    def _from_tensor(self, block: nn.Module, split: _Split):
        for start in range(0, len(split.targets), self.batch_size):
            x = split.features[start:start + self.batch_size].to(self.device)
            yield self._run(block, x), split.targets[start:start + self.batch_size]

    def _fill(self, stage: int, shape: tuple[int, ...], sources: dict) -> None:
        """Allocate stage `stage`'s storage (RAM or memory-mapped) and write every batch of every split into it."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        total = sum(n for n, _ in sources.values()) * itemsize * math.prod(shape)
        on_gpu = self.on_device and self.device.type != "cpu" and total <= self.device_budget
        in_ram = on_gpu or total <= self.budget
        if not in_ram:
            self._check_disk(total)
        splits = {}
        for name, (n, batches) in sources.items():
            path = None if in_ram else self.directory / f".cache-r{self.rank}-s{stage}-{name}.bin"
            features = _allocate((n, *shape), self.dtype, path, self.device if on_gpu else "cpu")
            targets = torch.empty(n, dtype=torch.long, device=features.device)
            start = 0
            for h, y in batches:
                features[start:start + len(y)].copy_(h)
                targets[start:start + len(y)].copy_(y)
                start += len(y)
            splits[name] = _Split(features, targets, path)
        self.splits, self.stage = splits, stage

    def _check_disk(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.directory).free
        if nbytes > free:
            raise UsageError(f"the feature cache needs {nbytes / 2**30:.1f} GiB on disk in {self.directory} "
                             f"but only {free / 2**30:.1f} GiB are free; raise --cache-budget-gb or pass --cache off")

    def _report(self, verb: str, seconds: float) -> None:
        self.seconds = seconds
        train = self.splits["train"].features
        where = (f"{train.device.type} memory" if train.device.type != "cpu" else "RAM") if self.in_ram else \
            f"memory-mapped file in {self.directory}"
        self.say(f"cache: {verb} stage{self.stage + 1} inputs {'x'.join(map(str, train.shape))} "
                 f"{str(self.dtype).removeprefix('torch.')} ({self.nbytes / 2**20:.1f} MiB, {where}) "
                 f"in {seconds:.1f}s")

    # what a stage trains on
    @property
    def in_ram(self) -> bool:
        return all(s.path is None for s in self.splits.values())

    @property
    def nbytes(self) -> int:
        return sum(s.features.numel() * s.features.element_size() for s in self.splits.values())

    def prefix(self) -> nn.Module:
        """What replaces the frozen prefix on cached inputs: nothing, or an upcast of narrower stored features."""
        return nn.Identity() if self.dtype in (torch.float32, self.compute_dtype) else ToFloat()

    def loaders(self, batch_size: int, eval_batch_size: int | None = None,
                pin_memory: bool = False) -> tuple[DataLoader | DeviceLoader, DataLoader | DeviceLoader]:
        """(train: shuffled exactly like the image loader, test: in order), over the cached features: DeviceLoaders
        with device_data (each process its shard, as the image DeviceLoaders), else DataLoaders accelerate shards."""
        eval_batch_size = eval_batch_size or batch_size
        if self.on_device:
            # the features stay where _fill put them: GPU memory under the device budget, else RAM
            shard = {"device": self.device, "seed": self.seed, "num_processes": self.num_processes,
                     "process_index": self.rank, "resident": False}
            train, test = self.splits["train"], self.splits["test"]
            return (DeviceLoader(train.features, train.targets, batch_size, shuffle=True, **shard),
                    DeviceLoader(test.features, test.targets, eval_batch_size, shuffle=False, **shard))
        pin = pin_memory and torch.cuda.is_available()  # pinning is for copies to a GPU
        common = {"collate_fn": collate_batch, "pin_memory": pin, "drop_last": False}
        train = DataLoader(self._dataset("train"), batch_size=batch_size, shuffle=True, **common)
        test = DataLoader(self._dataset("test"), batch_size=eval_batch_size, shuffle=False, **common)
        return train, test

    def _dataset(self, name: str) -> FeatureDataset:
        split = self.splits[name]
        return FeatureDataset(split.features, split.targets)

    # cleanup
    def close(self) -> None:
        """Free the features and delete any memory-mapped file."""
        self._release(self.splits)
        self.splits, self.stage = {}, None

    @staticmethod
    def _release(splits: dict[str, _Split]) -> None:
        for split in splits.values():
            split.features = torch.empty(0)
            if split.path is not None:
                split.path.unlink(missing_ok=True)

    def _remove_stale_files(self) -> None:
        """Files a killed run left behind."""
        for path in self.directory.glob(f".cache-r{self.rank}-s*.bin"):
            path.unlink(missing_ok=True)


def _allocate(shape: tuple[int, ...], dtype: torch.dtype, path: Path | None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialized tensor on `device` (RAM by default), or backed by a new file at `path` (shared mapping:
    pages can be evicted). The file's disk space is reserved first, so a full disk raises WriteFailed here
    rather than a SIGBUS when a page is written."""
    if path is None:
        return torch.empty(shape, dtype=dtype, device=device)
    size = math.prod(shape)
    preallocate(path, size * dtype.itemsize)
    with writing(path):
        return torch.from_file(str(path), shared=True, size=size, dtype=dtype).view(shape)

