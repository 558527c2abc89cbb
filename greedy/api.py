"""The Python front door: train a net greedily, end to end or decoupled, on a config and your data, in this
process, and get its per-stage results back. train.py runs the same `session.run_training`.

    import greedy
    result = greedy.train({"dataset": "digits", "widths": [16, 16, 32], "downsample": [3], "epochs": 2})
    for row in result.stages:
        print(row["stage"], row["test_acc"])

Nothing is left on disk unless `out_dir` is given (the run directory then stays, resumable with train.py
--resume). `greedy.analyze(result, probes="linear,knn")` probes the trained net's layers as evaluate.py --analysis
does, on the data it trained on or on your tensors. Bad input raises `greedy.UsageError`, a ValueError, with the
CLI's one-line words.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from greedy.analysis.context import analysis_settings
from greedy.analysis.report import architecture_difference, json_safe, parse_names
from greedy.analysis.runner import PAIRWISE, compare_cka, run_analysis
from greedy.checkpoint import RunDir
from greedy.config import build_config, checked_values, load_yaml
from greedy.datasets import (
    DataBundle,
    TensorImageDataset,
    dataset_classes,
    dataset_info,
    device_data_supported,
)
from greedy.errors import UsageError, warn
from greedy.models import GreedyNet, check_shapes, create_greedy_net
from greedy.schema import Config, shared_values
from greedy.session import config_data, run_training

__all__ = ["GreedyNet", "TrainResult", "analyze", "create_net", "loader_data", "make_config", "tensor_data", "train"]

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_test, y_test
Loaders = tuple[DataLoader, DataLoader]  # your own (train, test) DataLoaders


@dataclass
class TrainResult:
    """What a training run gives back.

    stages: one dict per trained stage (decoupled: per block; e2e: one), as train.py prints them: `stage`,
        `test_acc` (its head's test accuracy, 0..1), `ensemble_acc`, parameters, `time_s` (seconds), and
        `train_loss` (its local objective's mean loss over its last epoch);
    final_test_acc: the last head's test accuracy (0..1); stage_test_acc: every head's (None where e2e trained
        none); total_time_s: training seconds; net: the trained GreedyNet (on the device it trained on);
    run_dir: the run directory, or None when nothing was kept; summary: summary.json's content; config: the Config
    it trained with; epochs: every epoch's record as metrics.jsonl holds it (stage, epoch, loss and its terms,
    train_acc, test_acc or val_acc, lr, time in seconds); `data`: the DataBundle it trained on (its `val` split held
    out with val_split), which `analyze` probes unless given other data.
    """

    stages: list[dict[str, Any]]
    final_test_acc: float
    stage_test_acc: list[float | None]
    total_time_s: float
    net: GreedyNet
    run_dir: Path | None
    summary: dict[str, Any]
    config: Config
    epochs: list[dict[str, Any]]
    given_data: DataBundle | None = field(default=None, repr=False)

    @cached_property
    def data(self) -> DataBundle:
        """The data it trained on: the DataBundle given to `train`, or the config's data set read (on first use)
        as the run read it, unaugmented (normalization and validation split are functions of the config)."""
        if self.given_data is not None:
            return self.given_data
        return config_data(self.config, augment="none")

    @property
    def trained_heads(self) -> list[int]:
        """1-based heads that training fitted (every head greedily and decoupled, the last one end to end)."""
        return [j for j, acc in enumerate(self.stage_test_acc, 1) if acc is not None]


def make_config(config: Mapping[str, Any] | str | Path | Config = (), check_data: bool = True,
                **overrides: Any) -> Config:
    """A validated Config from a dict of config keys (as a YAML file holds them), a YAML path or a Config, with
    `overrides` (keyword config keys) on top. Raises UsageError (a ValueError) for an unknown key (with a
    did-you-mean), a value of the wrong type or range, or a missing data directory (`check_data`)."""
    if isinstance(config, Config):
        values, where = config.to_dict(), "the Config given"
    elif isinstance(config, (str, Path)):
        values, where = load_yaml(config), str(config)
    else:
        values, where = checked_values(dict(config), "the config given"), "the config given"
    values, warnings = shared_values(values, checked_values(overrides, "the keyword overrides"), where)
    for line in warnings:  # a key the config sets that this run does not read (another mode's): harmless
        warn(line)
    return build_config(values, check_data)


def tensor_data(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                num_classes: int | None = None) -> DataBundle:
    """A DataBundle of your tensors, taken as the net is to see them (already normalized): images float
    N x C x S x S (square), labels int N in 0..num_classes-1 (default: the largest label + 1). Raises UsageError
    for other shapes or labels."""
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if not _square_images(x):
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
    return _as_given(TensorImageDataset(x_train.float(), y_train.long()),
                     TensorImageDataset(x_test.float(), y_test.long()), classes, x_train.shape)


def loader_data(train_loader: DataLoader, test_loader: DataLoader, num_classes: int | None = None) -> DataBundle:
    """A DataBundle of your own DataLoaders, which training and evaluation read as they are (their batch size,
    sampler, workers, collate); batches `(float B x C x S x S images, as the net is to see them, int B labels)`.
    Their Datasets must be indexable (map-style): the probes and `analyze` draw seeded subsets of them. The image
    shape comes from the first training batch; num_classes from the argument, else the training Dataset's
    `classes` (a torchvision dataset's) or the largest of its `targets` + 1. Raises UsageError for anything else."""
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if not isinstance(loader, DataLoader):
            raise UsageError(f"{name} must be a torch DataLoader, got {type(loader).__name__}")
        if isinstance(loader.dataset, IterableDataset):
            raise UsageError(f"{name}: an IterableDataset cannot be indexed for the probes and analyze; wrap a "
                             "map-style Dataset (with __getitem__ and __len__) in the DataLoader")
    batch = next(iter(train_loader))
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    if not _square_images(x):
        raise UsageError("train_loader must yield (images, labels) batches with images a float tensor B x C x S x S "
                         f"(square), got {type(batch).__name__} {tuple(getattr(x, 'shape', ()))}")
    dataset = train_loader.dataset
    if num_classes is None and hasattr(dataset, "classes"):
        num_classes = len(dataset.classes)
    elif num_classes is None and hasattr(dataset, "targets"):
        num_classes = int(torch.as_tensor(dataset.targets).max()) + 1
    if num_classes is None or num_classes < 2:
        raise UsageError(f"loader_data: the number of classes is not known from {type(dataset).__name__} (no classes "
                         "or targets attribute); pass num_classes")
    return _as_given(dataset, test_loader.dataset, num_classes, x.shape, (train_loader, test_loader))


def _square_images(x: Any) -> bool:
    """Whether `x` is a float tensor N x C x S x S (a batch of square images)."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() and x.shape[2] == x.shape[3]


def _as_given(train: Dataset, test: Dataset, num_classes: int, shape: torch.Size,
              loaders: Loaders | None = None) -> DataBundle:
    """A DataBundle of images taken as the net is to see them (already normalized: mean 0, std 1 recorded), shaped
    like `shape` (N x C x S x S)."""
    channels = shape[1]
    return DataBundle(train, test, num_classes, channels, shape[-1], (0.0,) * channels, (1.0,) * channels,
                      loaders=loaders)


def create_net(config: Mapping[str, Any] | str | Path | Config = (), *, num_classes: int | None = None,
               in_chans: int | None = None, img_size: int | None = None, **overrides: Any) -> GreedyNet:
    """The config's GreedyNet, as train.py builds it (with this process's random state): `{"widths": [64, 64,
    128]}`, a ResNet (`arch: resnet`), or a timm CNN split into local modules (`{"arch": "timm", "model":
    "resnet18", "num_modules": 4}`), each with its auxiliary net. Inputs N x in_chans x img_size x img_size and
    num_classes default to the config's data set's (no data is read). Raises UsageError for a bad config or images
    too small for the net (naming the module)."""
    cfg = make_config(config, check_data=False, **overrides)
    info = dataset_info(cfg.dataset)
    shape = (in_chans or info.in_chans, img_size or cfg.img_size or info.img_size)
    classes = num_classes or cfg.num_classes or dataset_classes(cfg.dataset, cfg.data_dir) or info.num_classes
    check_shapes(cfg, *shape, classes)
    return create_greedy_net(cfg, num_classes=classes, in_chans=shape[0], img_size=shape[1])


def train(config: Mapping[str, Any] | str | Path | Config = (),
          data: DataBundle | Tensors | Loaders | None = None, *, net: GreedyNet | None = None,
          out_dir: str | Path | None = None, **overrides: Any) -> TrainResult:
    """Train the config's net in this process, as train.py does, and return its results.

    config: a dict of config keys, a YAML path or a Config; `overrides`, keyword config keys on top (e.g.
    `mode="decoupled"`, `objective="infopro_contrast"`). data: None (the config's data set), a DataBundle
    (`greedy.datasets.create_datasets`, or your own Datasets in one), tensors `(x_train, y_train, x_test,
    y_test)` (see `tensor_data`), or your DataLoaders `(train_loader, test_loader)`, read as they are (see
    `loader_data`; batch_size then records theirs). net: your own GreedyNet (`greedy.create_net(config)`, or
    `greedy.GreedyNet.from_units(your units, ...)`: its modules, auxiliary nets and heads as built) instead of the
    config's architecture keys; the config still gives
    the mode, objective, optimizer and epochs (train.py and evaluate.py cannot rebuild such a run from its
    directory). out_dir: where the run directory is kept; None keeps nothing (a temporary
    folder, removed at the end, even on an error; with `tracker="wandb"` the run still goes to W&B online, and an
    offline W&B run needs out_dir to be kept). Raises UsageError (a ValueError, before any work where possible),
    greedy.errors.TrainingDiverged for a non-finite loss.
    """
    if isinstance(data, tuple):
        data = loader_data(*data) if len(data) == 2 else tensor_data(*data)
    cfg = make_config(config, check_data=data is None, **overrides)
    if data is not None and data.loaders is not None:
        cfg = _for_loaders(cfg, data.loaders)
    elif data is not None and not device_data_supported(data):
        cfg = replace(cfg, device_data="off")  # your own Datasets: per-item DataLoaders
    name = Path(config).stem if isinstance(config, (str, Path)) else "python"
    if out_dir is not None:
        summary, trained, run = run_training(replace(cfg, out_dir=str(out_dir)), None, name, data, net)
        return _result(summary, trained, run, cfg, data, keep=True)
    with tempfile.TemporaryDirectory(prefix="greedy-") as tmp:
        summary, trained, run = run_training(replace(cfg, out_dir=tmp), None, name, data, net)
        return _result(summary, trained, run, cfg, data, keep=False)  # its records read before the folder goes


def _for_loaders(cfg: Config, loaders: tuple[DataLoader, DataLoader]) -> Config:
    """The config of a run on your DataLoaders: their batch sizes recorded, no feature cache or device copy (they
    would read the Datasets past your loaders); refuses what would need other loaders (val_split, pipeline, cache
    on)."""
    for key, value, fix in (("val_split", cfg.val_split, "pass a validation loader as test_loader"),
                            ("pipeline", cfg.pipeline > 1, "pass a DataBundle of Datasets or tensors"),
                            ("cache", cfg.cache == "on", "drop it: the cache would read the Datasets without them")):
        if value:
            raise UsageError(f"config key '{key}' builds loaders of its own, but your DataLoaders are used as they "
                             f"are; {fix}")
    train_batch, test_batch = (loader.batch_size for loader in loaders)
    return replace(cfg, cache="off", device_data="off", batch_size=train_batch or cfg.batch_size,
                   eval_batch_size=test_batch or cfg.eval_batch_size)


def _result(summary: dict[str, Any], net: GreedyNet, run: RunDir, cfg: Config, data: DataBundle | None,
            keep: bool) -> TrainResult:
    epochs = run.read_metrics("epoch")
    last_loss = {record["stage"]: record["loss"] for record in epochs}  # each stage's (block's) last epoch
    rows = [{**row, "train_loss": last_loss.get(row["stage"]) if row["stage"] != "e2e" else epochs[-1]["loss"]}
            for row in summary["rows"]]
    return TrainResult(rows, summary["final_test_acc"], summary["stage_test_acc"], summary["total_time_s"], net,
                       run.path if keep else None, summary, cfg, epochs, data)


def analyze(trained: TrainResult | GreedyNet, data: DataBundle | Tensors | None = None,
            probes: str | Sequence[str] = "linear", *, other: TrainResult | GreedyNet | None = None,
            trained_heads: Sequence[int] | None = None, init_net: GreedyNet | None = None,
            **settings: Any) -> dict[str, Any]:
    """Probe every layer of a trained net, as `evaluate.py RUN --analysis NAMES` does, in this process.

    trained: a TrainResult (its net, the heads it trained and, by default, the data it trained on) or a GreedyNet.
    data: a DataBundle or tensors `(x_train, y_train, x_test, y_test)` (see `tensor_data`); the probes fit on a
    seeded subset of its training split, read unaugmented, and score on one of its test split (`samples` each).
    probes: probe families, "linear,knn", a list, or "all" (`greedy.analysis.runner.FAMILIES`); the pairwise ones
    (connectivity, ...) need `other`, a second net of the same architecture, which also adds a layer-by-layer CKA
    (`compare`) when "cka" is asked for. trained_heads: 1-based heads to read (default: the TrainResult's, or all).
    init_net: the net before training (same architecture), which adds the init_* values of moments and chaos.
    settings: AnalysisSettings fields (`samples=500`, `pool=2`, `knn_k=5`, `seed=0`, ...).

    Returns the JSON-ready result of `greedy.analysis.runner.run_analysis` (one entry of analysis.json's "runs"):
    {"samples": sizes and digests of the subsets, "layers": [{"name", "depth", "kind", "shape"}], family:
    {"settings", "notes", "layers": [{"layer", "depth", "kind", values...}]}, ...}; accuracies in 0..1. The nets
    are left in the training mode they were in. Raises UsageError (a ValueError) for an unknown family or setting
    (with a did-you-mean), a pairwise family without `other`, no data for a bare net, or data whose classes or
    image shape the net does not take.
    """
    net = trained.net if isinstance(trained, TrainResult) else trained
    if data is None:
        if not isinstance(trained, TrainResult):
            raise UsageError("analyze: a bare GreedyNet needs data: pass a DataBundle or (x_train, y_train, x_test, "
                             "y_test)")
        data = trained.data
    elif isinstance(data, tuple):
        data = tensor_data(*data, num_classes=net.num_classes)
    asked = [p.strip() for p in (probes.split(",") if isinstance(probes, str) else probes)]
    names = parse_names(",".join(asked))
    pairwise = [n for n in names if n in PAIRWISE]
    if pairwise and other is None:
        if "all" not in asked:
            raise UsageError(f"analyze: probe family {pairwise[0]!r} compares two nets of one architecture; pass "
                             "other=(a TrainResult or GreedyNet)")
        names = [n for n in names if n not in PAIRWISE]
    options = analysis_settings(settings)
    if data.num_classes != net.num_classes:
        raise UsageError(f"analyze: the net has {net.num_classes} classes but the data {data.num_classes}; probe it "
                         "on data of its classes")
    shape = (data.in_chans, data.img_size, data.img_size)
    if shape != net.input_shape:
        raise UsageError(f"analyze: the net takes {' x '.join(map(str, net.input_shape))} images but the data holds "
                         f"{' x '.join(map(str, shape))}; probe it on images of the size it trained on")
    heads = list(trained_heads) if trained_heads is not None else (
        trained.trained_heads if isinstance(trained, TrainResult) else None)
    pair = {}
    if other is not None:
        pair = {"other": other.net if isinstance(other, TrainResult) else other,
                "other_heads": other.trained_heads if isinstance(other, TrainResult) else None}
    diff = architecture_difference(net, pair["other"]) if pair and set(names) & set(PAIRWISE) else None
    if diff:
        raise UsageError(f"analyze: {', '.join(n for n in names if n in PAIRWISE)} interpolates the weights of one "
                         f"architecture, but the nets differ at {diff}; pass other= a net of the same architecture")
    probed = replace(data, train=data.unaugmented_train())  # fit on training images as the test split is read
    modes = [(m, m.training) for m in (net, pair.get("other"), init_net) if m is not None]
    try:
        result = run_analysis(net, probed, names, options, heads, init_net=init_net, **pair)
        if pair and "cka" in names:
            result["compare"] = {"cka": compare_cka(net, pair["other"], probed, options)}
    finally:
        for module, training in modes:
            module.train(training)
    return json_safe(result)
