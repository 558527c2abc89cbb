"""Measuring training steps: activation bytes saved for backward, and interleaved step timings."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable

import torch


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs, each storage counted once.

    Storages of `exclude` (e.g. the parameters: weights, not activations) are left out. Every counted storage
    is kept alive until `fn` returns, so a freed address reused later in the step cannot hide a second one.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen.setdefault(storage.data_ptr(), storage)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(s.nbytes() for s in seen.values())


def synchronize(device: torch.device | None) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(variants: dict[str, Callable[[], object]], steps: int, warmup: int = 2,
                      device: torch.device | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each call of each variant, run round-robin (one call of each per round, in a fresh random
    order each round) after `warmup` rounds, so that machine noise and position in the round hit every
    variant alike."""
    rng = random.Random(seed)
    names = list(variants)
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):
        rng.shuffle(names)
        for name in names:
            synchronize(device)
            t0 = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) in the same round: drift between rounds cancels out."""
    return median([ta / tb for ta, tb in zip(times[a], times[b], strict=True)])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak CUDA memory allocated while `fn` runs, above what was allocated before; None off GPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
