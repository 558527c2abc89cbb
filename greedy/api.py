"""The Python front door: train a net greedily, end to end or decoupled, on a config and your data, in this
process, and get its per-stage results back. train.py runs the same `session.run_training`.

    import greedy
    result = greedy.train({"dataset": "digits", "widths": [16, 16, 32], "downsample": [3], "epochs": 2})
    for row in result.stages:
        print(row["stage"], row["test_acc"])

Nothing is left on disk unless `out_dir` is given (the run directory then stays, resumable with train.py
--resume). Bad input raises `greedy.UsageError`, a ValueError, with the CLI's one-line words.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from greedy.config import build_config, checked_values, load_yaml
from greedy.datasets import DataBundle, TensorImageDataset, device_data_supported
from greedy.errors import UsageError
from greedy.models import GreedyNet
from greedy.schema import Config
from greedy.session import run_training

__all__ = ["GreedyNet", "TrainResult", "make_config", "tensor_data", "train"]


@dataclass
class TrainResult:
    """What a training run gives back.

    stages: one dict per trained stage (decoupled: per block; e2e: one), as train.py prints them: `stage`,
        `test_acc` (its head's test accuracy, 0..1), `ensemble_acc`, parameters, `time_s` (seconds);
    final_test_acc: the last head's test accuracy (0..1); stage_test_acc: every head's (None where e2e trained
        none); total_time_s: training seconds; net: the trained GreedyNet (on the device it trained on);
    run_dir: the run directory, or None when nothing was kept; summary: summary.json's content.
    """

    stages: list[dict[str, Any]]
    final_test_acc: float
    stage_test_acc: list[float | None]
    total_time_s: float
    net: GreedyNet
    run_dir: Path | None
    summary: dict[str, Any]


def make_config(config: Mapping[str, Any] | str | Path | Config = (), check_data: bool = True,
                **overrides: Any) -> Config:
    """A validated Config from a dict of config keys (as a YAML file holds them), a YAML path or a Config, with
    `overrides` (keyword config keys) on top. Raises UsageError (a ValueError) for an unknown key (with a
    did-you-mean), a value of the wrong type or range, or a missing data directory (`check_data`)."""
    if isinstance(config, Config):
        values = config.to_dict()
    elif isinstance(config, (str, Path)):
        values = load_yaml(config)
    else:
        values = dict(config)
    return build_config(checked_values({**values, **overrides}, "the config given"), check_data)


def tensor_data(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                num_classes: int | None = None) -> DataBundle:
    """A DataBundle of your tensors, taken as the net is to see them (already normalized): images float
    N x C x S x S (square), labels int N in 0..num_classes-1 (default: the largest label + 1). Raises UsageError
    for other shapes or labels."""
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() and x.shape[2] == x.shape[3]):
            raise UsageError(f"x_{name} must be a float tensor N x C x S x S (square images), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
        if not (isinstance(y, torch.Tensor) and y.ndim == 1 and len(y) == len(x) and not y.is_floating_point()):
            raise UsageError(f"y_{name} must be an integer tensor of {len(x)} labels, one per image of x_{name}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UsageError(f"x_train images are {tuple(x_train.shape[1:])} but x_test's {tuple(x_test.shape[1:])}; "
                         "give both splits one shape")
    classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        bad = torch.nonzero((y < 0) | (y >= classes)).flatten()
        if len(bad):
            raise UsageError(f"{name}: label {int(y[bad[0]])} at index {int(bad[0])} is outside 0..{classes - 1}; "
                             "labels are class indices (pass num_classes if some class has no example)")
    channels = x_train.shape[1]
    return DataBundle(TensorImageDataset(x_train.float(), y_train.long()), TensorImageDataset(x_test.float(),
                      y_test.long()), classes, channels, x_train.shape[-1], (0.0,) * channels, (1.0,) * channels)


def train(config: Mapping[str, Any] | str | Path | Config = (),
          data: DataBundle | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None, *,
          net: GreedyNet | None = None, out_dir: str | Path | None = None, **overrides: Any) -> TrainResult:
    """Train the config's net in this process, as train.py does, and return its results.

    config: a dict of config keys, a YAML path or a Config; `overrides`, keyword config keys on top (e.g.
    `mode="decoupled"`, `objective="infopro_contrast"`). data: None (the config's data set), a DataBundle
    (`greedy.datasets.create_datasets`, or your own Datasets in one), or tensors `(x_train, y_train, x_test,
    y_test)` (see `tensor_data`). net: your own GreedyNet (`greedy.GreedyNet.from_units(your units, ...)`: its
    modules, auxiliary nets and heads as built) instead of the config's architecture keys; the config still gives
    the mode, objective, optimizer and epochs (train.py and evaluate.py cannot rebuild such a run from its
    directory). out_dir: where the run directory is kept; None keeps nothing (a temporary
    folder, removed at the end, even on an error; with `tracker="wandb"` the run still goes to W&B online, and an
    offline W&B run needs out_dir to be kept). Raises UsageError (a ValueError, before any work where possible),
    greedy.errors.TrainingDiverged for a non-finite loss.
    """
    if isinstance(data, tuple):
        data = tensor_data(*data)
    cfg = make_config(config, check_data=data is None, **overrides)
    if data is not None and not device_data_supported(data):
        cfg = replace(cfg, device_data="off")  # your own Datasets: per-item DataLoaders
    name = Path(config).stem if isinstance(config, (str, Path)) else "python"
    if out_dir is not None:
        summary, trained, run = run_training(replace(cfg, out_dir=str(out_dir)), None, name, data, net)
        return _result(summary, trained, run.path)
    with tempfile.TemporaryDirectory(prefix="greedy-") as tmp:
        summary, trained, _ = run_training(replace(cfg, out_dir=tmp), None, name, data, net)
    return _result(summary, trained, None)


def _result(summary: dict[str, Any], net: GreedyNet, run_dir: Path | None) -> TrainResult:
    return TrainResult(summary["rows"], summary["final_test_acc"], summary["stage_test_acc"],
                       summary["total_time_s"], net, run_dir, summary)
