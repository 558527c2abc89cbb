"""The one config schema: YAML file + flat command-line overrides + validation."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from greedy.data import AUGMENTATIONS, DATASETS
from greedy.errors import UsageError

MODES = ("greedy", "e2e", "decoupled")
DOWNSAMPLE_MODES = ("space_to_depth", "maxpool")
ARCHS = ("plain", "resnet", "timm")
RESIDUAL_BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("none", "wandb")
CACHE_MODES = ("auto", "on", "off")
DEVICE_DATA_MODES = ("auto", "on", "off")
CACHE_DTYPES = ("auto", "fp32", "fp16", "bf16")
# Keys that may differ on --resume: they change how a run executes, not what it computes.
RESUME_MUTABLE = ("no_progress", "num_workers", "pin_memory", "persistent_workers", "data_dir", "cache_budget_gb",
                  "cache_device_gb", "log_every", "strict_data", "finite_check_every", "pipeline_timeout")
# Datasets whose files must exist on disk unless `download` is set.
DISK_DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")
# timm schedulers whose learning rate is a function of the epoch alone ('plateau' needs a metric, 'none' no LR)
SCHEDULERS = ("step", "multistep", "cosine", "tanh", "poly", "constant", "wsd", "rsqrt")


@dataclass
class Config:
    """Every knob of a run. Keys are flat so that each one is also a `--key value` flag."""

    # run
    name: str | None = None  # run directory name under out_dir; default: <config>-<mode>-<time>
    out_dir: str = "runs"
    mode: str = "greedy"  # greedy | e2e | decoupled
    seed: int = 0
    experiment: str | None = None  # W&B group shared by the runs of one comparison
    tracker: str = "none"  # none | wandb
    log_every: int = 50  # steps between per-step W&B logs (each costs a device sync); epochs are always logged
    wandb_project: str = "greedy"
    no_progress: bool = False

    # data
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    img_size: int | None = None  # None: the dataset's native size
    num_classes: int | None = None  # None: the dataset's
    augment: str = "none"  # none | crop_flip | imagenet
    device_data: str = "auto"  # in-memory datasets held on the accelerator, batches augmented there: auto (= on for
    # every dataset but imagenet) | on | off (a DataLoader with per-image transforms, as before)
    num_workers: int | None = None  # DataLoader workers per process; None: imagenet one per CPU core (at most 8)
    # shared among the node's processes, in-memory datasets 0 (workers only slow a tensor dataset down)
    pin_memory: bool = True  # page-locked batches and non-blocking copies (only with a GPU)
    persistent_workers: bool = True  # keep loader workers alive across the epochs of a stage (num_workers > 0)
    strict_data: bool = False  # an unreadable image stops the run (exit 2) instead of being skipped and reported

    # architecture (data, not code: every shipped model is one of these)
    arch: str = "plain"  # plain (conv blocks, Belilovsky et al. 2019) | resnet (CIFAR ResNet, He et al. 2016) | timm
    model: str | None = None  # arch timm: a timm CNN's name (resnet50, convnext_atto, ...), cut into local modules
    pretrained: bool = False  # arch timm: start from timm's pretrained weights (fetched from the Hugging Face hub)
    block: str = "basic"  # resnet's residual block: basic (two 3x3) | bottleneck (1x1, 3x3, 1x1 x4 channels)
    shortcut: str = "A"  # resnet's shortcut where the shape changes: A (subsample, zero channels) | B (1x1 conv + BN)
    depths: list[int] = field(default_factory=list)  # resnet: residual blocks per stage ([5,5,5]: ResNet-32)
    stem_width: int | None = None  # resnet: width of the stem conv3x3; None: widths[0]
    num_modules: int | None = None  # local modules (blocks) the units are cut into, equal in FLOPs; None: 1 per unit
    split_points: list[int] = field(default_factory=list)  # explicit cut: 0-based units that start a local module
    input_downsample: bool = False  # space-to-depth the input once (ImageNet: 3x224x224 -> 12x112x112)
    widths: list[int] = field(default_factory=lambda: [64, 64, 128])  # plain: one per conv block; resnet: per stage
    downsample: list[int] = field(default_factory=list)  # 1-based blocks preceded by 2x downsampling
    downsample_mode: str = "space_to_depth"  # space_to_depth (invertible) | maxpool (VGG)
    batchnorm: bool = True  # plain conv blocks and auxiliary nets (ResNet blocks always have BatchNorm)
    k: int = 2  # hidden layers of each auxiliary problem, counting the block itself
    aux_width: int | None = None  # width of the auxiliary convs; None: the block's width
    pool_size: int = 2  # auxiliary heads average-pool to pool_size x pool_size
    aux: str = "cnn"  # auxiliary net: cnn (k; the paper's) | mlp | mlp_sr (DGL's) | linear | vgg (models/heads.py)
    final_head: str = "auxiliary"  # last block's head: auxiliary (the aux kind) | linear (ResNet's) | vgg | any aux
    # | timm (arch timm: the timm model's own classifier, so that the assembled net is exactly the timm model)

    # optimisation, per stage (greedy) or for the whole net (e2e)
    epochs: int = 10
    e2e_epochs: int | None = None  # None: same as epochs (per stage)
    batch_size: int = 128
    eval_batch_size: int | None = None
    opt: str = "momentum"  # any timm optimizer name; 'momentum' is SGD without Nesterov, as the paper
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = "step"  # any timm scheduler name
    decay_epochs: float = 15
    decay_rate: float = 0.2
    warmup_epochs: int = 0

    # execution
    mixed_precision: str = "no"  # no | bf16 | fp16
    grad_accum: int = 1
    channels_last: bool = False
    compile: bool = False
    cache: str = "auto"  # frozen-prefix feature cache: auto (when the train transform is deterministic) | on | off
    cache_budget_gb: float = 4.0  # RAM for cached features; beyond it they go to a memory-mapped file
    cache_device_gb: float = 4.0  # with device_data, GPU memory for cached features; beyond it they stay in RAM
    cache_dtype: str = "auto"  # auto (what the block computes in: mixed_precision's, else fp32) | fp32 | fp16 | bf16
    finite_check_every: int = 1  # steps between checks that the loss is finite (each costs a device sync)
    # pipelined decoupled training (greedy/pipeline.py): the blocks split into `pipeline` contiguous groups, one per
    # process (processes = pipeline x replicas); 1: every process holds every block
    pipeline: int = 1
    pipeline_split: list[int] = field(default_factory=list)  # blocks per group (sums to the blocks); []: balanced
    pipeline_timeout: float = 300.0  # seconds a process waits for a peer before it reports it lost

    # probes during training (greedy/analysis/during.py, docs/ANALYSIS.md): records of kind "probe" in metrics.jsonl
    probe_every: int = 0  # epochs between probes of the block(s) being trained (and each stage's last epoch); 0: off
    probes: list[str] = field(default_factory=lambda: ["linear", "clustering", "information"])  # layer families
    probe_samples: int = 500  # seeded test subset probed, and a same-size train subset the linear probe is fit on

    @property
    def num_units(self) -> int:
        """Units of the chain: a plain net's conv blocks, or a ResNet's stem and residual blocks (arch timm: not
        known before the model is built; validate() requires num_modules or split_points there)."""
        if self.arch == "timm":
            return self.num_modules or len(self.split_points) + 1
        return 1 + sum(self.depths) if self.arch == "resnet" else len(self.widths)

    @property
    def num_blocks(self) -> int:
        """Local modules (blocks) the units are cut into: the stages of a greedy run."""
        return len(self.split_points) + 1 if self.split_points else (self.num_modules or self.num_units)

    @property
    def train_epochs(self) -> int:
        """Epochs each trained part runs: e2e reads e2e_epochs (default: epochs), greedy and decoupled epochs."""
        return (self.e2e_epochs or self.epochs) if self.mode == "e2e" else self.epochs

    @property
    def on_device(self) -> bool:
        """Whether the data set is held on the accelerator (device_data on, or auto with an in-memory dataset)."""
        return self.device_data == "on" or (self.device_data == "auto" and self.dataset != "imagenet")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional) for `X | None`; list types are returned as-is."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _bad(key: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"config key '{key}': {value!r} is not {expected}")


def coerce(key: str, value: Any) -> Any:
    """Check and convert one value (from YAML or from the command line) to the key's type."""
    tp, optional = _base_type(_TYPES[key])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise _bad(key, value, "allowed to be empty")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise _bad(key, value, "a boolean (true/false)")
    if typing.get_origin(tp) is list and typing.get_args(tp) == (str,):
        if isinstance(value, str):
            value = [v.strip() for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(key, value, "a list of names (e.g. linear,clustering)")
        return list(value)
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, "a list of integers (e.g. 64,64,128)")
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError):
            raise _bad(key, value, "a list of integers (e.g. 64,64,128)") from None
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, "an integer")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise _bad(key, value, "an integer") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _bad(key, value, "a number") from None
    return str(value)


def _unknown_key(key: str, where: str) -> UsageError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see `python train.py --help` for the valid keys"
    return UsageError(f"unknown config key '{key}' in {where}; {hint}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            key = str(self.construct_object(key_node, deep=deep)).replace("-", "_")
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UsageError(f"config key '{key}' appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a dict of checked values (keys may use '-' or '_').

    Raises UsageError (one line, naming the file) for a missing file, invalid YAML, a key given twice,
    a non-mapping document, an unknown key or a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist; pass -c configs/<name>.yaml")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    except UsageError as err:
        raise UsageError(f"config file {path}: {err}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text; pass a YAML config") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path} must be a mapping of key: value")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise _unknown_key(str(key), str(path))
        values[name] = coerce(name, value)
    return values


def build_config(values: dict[str, Any], check_data: bool = True) -> Config:
    """A validated Config from checked values (`load_yaml`, `overrides_from_args`); raises UsageError."""
    cfg = Config(**values)
    validate(cfg, check_data)
    return cfg


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")


def _range(key: str, value: float | int | None, low: float, high: float = math.inf, *, open_low: bool = False,
           open_high: bool = False) -> None:
    """Refuse a value outside [low, high] (or the open ends asked for), NaN and infinities included."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"config key '{key}': {value} is not a finite number")
    if (value <= low if open_low else value < low) or (value >= high if open_high else value > high):
        fmt = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"  # noqa: E731
        lo = f"{'(' if open_low else '['}{fmt(low)}"
        hi = f"{fmt(high)}{')' if open_high else ']'}" if math.isfinite(high) else "inf)"
        raise UsageError(f"config key '{key}': {value} is outside the allowed range {lo}, {hi}")


# (low, high, open_low, open_high) of every numeric key; None-able keys are checked when set.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "seed": (0, 2**32 - 1, False, False),  # numpy's seeding range
    "log_every": (1, math.inf, False, False),
    "img_size": (1, math.inf, False, False),
    "num_classes": (2, math.inf, False, False),
    "num_workers": (0, math.inf, False, False),
    "k": (1, 3, False, False),  # hidden layers of each auxiliary problem, the block counted
    "aux_width": (1, math.inf, False, False),
    "stem_width": (1, math.inf, False, False),
    "num_modules": (1, math.inf, False, False),
    "pool_size": (1, math.inf, False, False),
    "epochs": (1, math.inf, False, False),
    "e2e_epochs": (1, math.inf, False, False),
    "batch_size": (1, math.inf, False, False),
    "eval_batch_size": (1, math.inf, False, False),
    "lr": (0, math.inf, True, False),
    "momentum": (0, 1, False, True),
    "weight_decay": (0, math.inf, False, False),
    "decay_epochs": (0, math.inf, True, False),
    "decay_rate": (0, 1, True, False),  # the LR is multiplied by it: above 1 it grows, at 0 it vanishes
    "warmup_epochs": (0, math.inf, False, False),
    "grad_accum": (1, math.inf, False, False),
    "cache_budget_gb": (0, math.inf, False, False),
    "cache_device_gb": (0, math.inf, False, False),
    "finite_check_every": (1, math.inf, False, False),
    "pipeline": (1, math.inf, False, False),
    "pipeline_timeout": (0, math.inf, True, False),
    "probe_every": (0, math.inf, False, False),
    "probe_samples": (10, math.inf, False, False),  # a few per class: the probes need every class twice or more
}


def _check_name(key: str, value: str | None, what: str) -> None:
    if value is not None and (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value):
        raise UsageError(f"config key '{key}': {value!r} is not a valid {what}; use letters, digits, '-', '_', '.'")


def validate(cfg: Config, check_data: bool = True) -> None:
    """Reject configs that cannot work, before any data is loaded or file is written.

    Every key is checked: choices against their lists, numbers against `RANGES` (finite, and the range in the
    message), names, the architecture's consistency, the optimizer and scheduler (built once by timm on a dummy
    parameter), and, with `check_data`, that the data directory exists. Raises UsageError (one line).
    """
    _choice("mode", cfg.mode, MODES)
    _choice("tracker", cfg.tracker, TRACKERS)
    _choice("dataset", cfg.dataset, DATASETS)
    _choice("augment", cfg.augment, AUGMENTATIONS)
    _choice("downsample_mode", cfg.downsample_mode, DOWNSAMPLE_MODES)
    from greedy.models.heads import HEADS  # here: the models import this module

    _choice("arch", cfg.arch, ARCHS)
    _choice("block", cfg.block, RESIDUAL_BLOCKS)
    _choice("shortcut", cfg.shortcut, SHORTCUTS)
    _choice("aux", cfg.aux, tuple(HEADS))
    _choice("final_head", cfg.final_head, ("auxiliary", *HEADS, "timm"))
    _choice("mixed_precision", cfg.mixed_precision, MIXED_PRECISION)
    _choice("cache", cfg.cache, CACHE_MODES)
    _choice("device_data", cfg.device_data, DEVICE_DATA_MODES)
    _choice("cache_dtype", cfg.cache_dtype, CACHE_DTYPES)
    _choice("sched", cfg.sched, SCHEDULERS)
    for key, (low, high, open_low, open_high) in RANGES.items():
        _range(key, getattr(cfg, key), low, high, open_low=open_low, open_high=open_high)
    _check_name("name", cfg.name, "run directory name")
    _check_name("wandb_project", cfg.wandb_project, "W&B project name")
    if not cfg.out_dir:
        raise UsageError("config key 'out_dir': must not be empty; pass --out-dir runs")
    if not cfg.widths or any(w <= 0 for w in cfg.widths):
        raise UsageError(f"config key 'widths': {cfg.widths} must be a non-empty list of positive integers")
    bad = [d for d in cfg.downsample if not 1 <= d <= len(cfg.widths)]
    if bad:
        raise UsageError(
            f"config key 'downsample': block(s) {bad} do not exist; 'widths' lists {len(cfg.widths)} blocks "
            f"(1-based indices 1..{len(cfg.widths)})"
        )
    if cfg.arch == "resnet":
        if len(cfg.depths) != len(cfg.widths) or any(d < 1 for d in cfg.depths):
            raise UsageError(f"config key 'depths': {cfg.depths} must give at least 1 residual block for each of the "
                             f"{len(cfg.widths)} stages in 'widths' (arch resnet)")
        if not cfg.batchnorm:
            raise UsageError("config key 'batchnorm': false is for arch plain; ResNet blocks always have BatchNorm")
        if cfg.downsample:
            raise UsageError(f"config key 'downsample': {cfg.downsample} is for arch plain; resnet stages after the "
                             "first downsample by stride 2 (pass --downsample '')")
    elif cfg.depths:
        raise UsageError(f"config key 'depths': {cfg.depths} is for arch resnet (arch is {cfg.arch})")
    _check_timm(cfg)
    if cfg.split_points and (cfg.split_points != sorted(set(cfg.split_points)) or cfg.split_points[0] < 1):
        raise UsageError(f"config key 'split_points': {cfg.split_points} must be increasing unit indices >= 1 "
                         "(0-based units where a new local module starts)")
    if len(set(cfg.downsample)) != len(cfg.downsample):
        raise UsageError(f"config key 'downsample': {cfg.downsample} names a block twice")
    fits = "imagenet" if cfg.dataset == "imagenet" else "crop_flip"  # PIL pipeline vs in-memory tensors
    if cfg.augment not in ("none", fits):
        raise UsageError(f"config key 'augment': {cfg.augment!r} does not apply to dataset '{cfg.dataset}'; "
                         f"use {fits} or none")
    if cfg.device_data == "on" and cfg.dataset == "imagenet":
        raise UsageError("config key 'device_data': on holds an in-memory dataset on the accelerator; imagenet is "
                         "decoded from image folders by DataLoader workers: use --device-data auto or off")
    _check_optimizer(cfg)
    _check_pipeline(cfg)
    _check_probes(cfg)
    if check_data and cfg.dataset in DISK_DATASETS and not cfg.download and not Path(cfg.data_dir).is_dir():
        raise UsageError(
            f"data directory {cfg.data_dir} for dataset '{cfg.dataset}' does not exist; "
            "pass --data-dir PATH (or --download true for cifar10/cifar100/fashion_mnist)"
        )


def _check_pipeline(cfg: Config) -> None:
    """pipeline > 1 needs mode decoupled, fp32, no accumulation, and at most one group per block; pipeline_split
    gives every group at least one block and all the blocks."""
    if cfg.pipeline_split and cfg.pipeline == 1:
        raise UsageError(f"config key 'pipeline_split': {cfg.pipeline_split} needs --pipeline "
                         f"{len(cfg.pipeline_split)} (the number of groups it lists)")
    if cfg.pipeline == 1:
        return
    if cfg.mode != "decoupled":
        raise UsageError(f"config key 'pipeline': {cfg.pipeline} groups pipeline the blocks of mode decoupled "
                         f"(mode is {cfg.mode}); pass --mode decoupled or --pipeline 1")
    if cfg.mixed_precision != "no" or cfg.grad_accum != 1:
        raise UsageError(f"config key 'pipeline': pipelined training runs in fp32 without accumulation "
                         f"(mixed_precision is {cfg.mixed_precision}, grad_accum {cfg.grad_accum}); pass "
                         "--mixed-precision no --grad-accum 1 or --pipeline 1")
    if cfg.pipeline > cfg.num_blocks:
        raise UsageError(f"config key 'pipeline': {cfg.pipeline} groups but the net has {cfg.num_blocks} blocks; "
                         "use at most one group per block")
    split = cfg.pipeline_split
    if split and (len(split) != cfg.pipeline or min(split) < 1 or sum(split) != cfg.num_blocks):
        raise UsageError(f"config key 'pipeline_split': {split} must give each of the {cfg.pipeline} groups at "
                         f"least one block, {cfg.num_blocks} blocks in all (e.g. "
                         f"{[cfg.num_blocks - cfg.pipeline + 1] + [1] * (cfg.pipeline - 1)})")


def _check_timm(cfg: Config) -> None:
    """arch timm needs a model name and a number of local modules; model, pretrained and final_head timm need
    arch timm. The name itself is checked when the model is built (backbones.timm_units)."""
    if cfg.arch == "timm":
        if not cfg.model:
            raise UsageError("config key 'model': arch timm needs a timm model name (e.g. --model resnet18)")
        if not cfg.num_modules and not cfg.split_points:
            raise UsageError("config key 'num_modules': arch timm needs num_modules (or split_points): how many "
                             "local modules to cut the timm model into")
        return
    for key, value in (("model", cfg.model), ("pretrained", cfg.pretrained)):
        if value:
            raise UsageError(f"config key '{key}': {value!r} is for arch timm (arch is {cfg.arch}); "
                             "pass --arch timm or drop the key")
    if cfg.final_head == "timm":
        raise UsageError(f"config key 'final_head': 'timm' (the timm model's own classifier) is for arch timm "
                         f"(arch is {cfg.arch})")


def _check_probes(cfg: Config) -> None:
    """Every name in `probes` is a probe family that can run during training (did-you-mean otherwise), and
    probing is asked for with at least one."""
    from greedy.analysis.during import PROBES  # here: the analysis imports the models, which import this module

    for name in cfg.probes:
        if name not in PROBES:
            close = difflib.get_close_matches(name, PROBES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(f"config key 'probes': {name!r} is not a probe during training; {hint}choose from "
                             f"{', '.join(PROBES)}")
    if cfg.probe_every and not cfg.probes:
        raise UsageError(f"config key 'probes': empty while probe_every is {cfg.probe_every}; name at least one "
                         f"({', '.join(PROBES)}) or pass --probe-every 0")
    if cfg.probe_every and cfg.pipeline > 1:
        raise UsageError(f"config key 'probe_every': probes during training need the whole net in one process, but "
                         f"--pipeline {cfg.pipeline} spreads its blocks; drop --probe-every (probe the finished run "
                         "with evaluate.py --analysis) or --pipeline")


def _check_optimizer(cfg: Config) -> None:
    """Build the optimizer and scheduler once, with the trainer's own factories, on a dummy layer: timm's own
    checks, before any work."""
    import torch
    from timm.optim import list_optimizers

    from greedy.trainer import make_optimizer, make_scheduler  # here: the trainer imports this module

    if cfg.opt.lower() not in list_optimizers():
        close = difflib.get_close_matches(cfg.opt.lower(), list_optimizers(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see timm.optim.list_optimizers()"
        raise UsageError(f"config key 'opt': {cfg.opt!r} is not a timm optimizer; {hint}")
    try:
        make_scheduler(cfg, make_optimizer(cfg, torch.nn.Linear(1, 1)), cfg.train_epochs)
    except (ValueError, TypeError, AssertionError) as err:
        raise UsageError(f"config keys opt/sched: timm refuses opt={cfg.opt!r} sched={cfg.sched!r} "
                         f"({' '.join(str(err).split())})") from None


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line; an unknown flag gets the nearest real one (`--num-module` -> `--num-modules`)."""
        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            for arg in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(arg.split("=")[0], flags, n=1) if arg.startswith("--") else []
                if close:
                    hint = f"; did you mean {close[0]}?"
                    break
        raise UsageError(f"{message}{hint}; see `{self.prog} --help`")


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--key value` flag per config key (defaults None: only what is given overrides)."""
    group = parser.add_argument_group("config keys (override the YAML file)")
    for name in FIELDS:
        tp, _ = _base_type(_TYPES[name])
        kwargs: dict[str, Any] = {"default": None, "dest": name, "metavar": "V"}
        if tp is bool:  # `--wandb`-style bare flags mean true
            kwargs.update(nargs="?", const="true")
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, **kwargs)
    group.add_argument("--wandb", dest="tracker", action="store_const", const="wandb", help="same as --tracker wandb")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    # No abbreviations: `--epoch 3` must be an error, not silently `--epochs 3`.
    return _OneLineParser(prog=prog, description=description, allow_abbrev=False)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line, checked and converted."""
    return {name: coerce(name, getattr(args, name)) for name in FIELDS if getattr(args, name) is not None}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
