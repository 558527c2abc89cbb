"""The one config loader: YAML file + flat command-line overrides + validation, for the schema of greedy/schema.py."""

from __future__ import annotations

import argparse
import difflib
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.optim import list_optimizers

from greedy.errors import UsageError
from greedy.optim import make_optimizer, make_scheduler
from greedy.registry import DATASETS, HEADS, OBJECTIVES, check_choice, did_you_mean
from greedy.schema import FIELDS, GROUPS, HEAD_OPTIONS, Config, choices, key_default, reads, unread_keys

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
        number, example = (float, "a list of numbers (e.g. 5,1,0,1)") if typing.get_args(tp) == (float,) else (
            int, "a list of integers (e.g. 64,64,128)")
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) for v in value):
            raise _bad(key, value, example)
        try:
            return [number(v) for v in value]
        except (TypeError, ValueError):
            raise _bad(key, value, example) from None
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


def unknown_key(key: str, where: str) -> UsageError:
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
    return checked_values(raw, str(path))


def checked_values(raw: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """A mapping of config keys (a YAML file's, a Python dict's; '-' or '_') as checked values, keyed by their
    schema names. Raises UsageError for an unknown key (did-you-mean, naming `where`) or a value of the wrong
    type."""
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise unknown_key(str(key), where)
        values[name] = coerce(name, value)
    return values


def build_config(values: dict[str, Any], check_data: bool = True) -> Config:
    """A validated Config from checked values (`load_yaml`, `overrides_from_args`); raises UsageError."""
    cfg = Config(**values)
    validate(cfg, check_data)
    return cfg


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
    "val_split": (0, 1, False, True),  # 1 would leave nothing to train on
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
    "predsim_beta": (0, 1, False, False),
    "predsim_dim": (1, math.inf, False, False),
    "contrast_temperature": (0, math.inf, True, False),
    "auglocal_depth": (1, math.inf, False, False),
    "auglocal_tau": (0, 1, False, False),  # the last module's depth shrinks towards 1, never below
    "man_momentum": (0, 1, False, True),  # at 1 the EMA copy would never follow
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
    for key in FIELDS:
        allowed = choices(key)
        if allowed is not None and typing.get_origin(_TYPES[key]) is not list:  # probes: _check_probes
            check_choice(key, getattr(cfg, key), allowed)
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
    if cfg.split_points and cfg.split_by != "flops":
        raise UsageError(f"config key 'split_by': {cfg.split_by} balances the modules num_modules cuts, but "
                         f"split_points {cfg.split_points} gives the cut; drop one of them")
    if len(set(cfg.downsample)) != len(cfg.downsample):
        raise UsageError(f"config key 'downsample': {cfg.downsample} names a block twice")
    in_memory = DATASETS[cfg.dataset].in_memory  # in-memory tensors, or a PIL pipeline over image folders
    fits = "crop_flip" if in_memory else "imagenet"
    if cfg.augment not in ("none", fits):
        raise UsageError(f"config key 'augment': {cfg.augment!r} does not apply to dataset '{cfg.dataset}'; "
                         f"use {fits} or none")
    _check_norm(cfg)
    if cfg.device_data == "on" and not in_memory:
        raise UsageError(f"config key 'device_data': on holds an in-memory dataset on the accelerator; {cfg.dataset} "
                         "is decoded from image folders by DataLoader workers: use --device-data auto or off")
    _check_optimizer(cfg)
    _check_pipeline(cfg)
    _check_probes(cfg)
    _check_objective(cfg)
    _check_head_options(cfg)
    if cfg.grad_checkpoint and cfg.mode != "e2e":
        raise UsageError(f"config key 'grad_checkpoint': true recomputes the activations of end-to-end training "
                         f"(mode is {cfg.mode}, whose parts keep only one module's); pass --mode e2e or drop it")
    if check_data and DATASETS[cfg.dataset].files and not cfg.download and not Path(cfg.data_dir).is_dir():
        raise UsageError(
            f"data directory {cfg.data_dir} for dataset '{cfg.dataset}' does not exist; "
            f"pass --data-dir PATH (or --download true for {'/'.join(n for n in DATASETS if DATASETS[n].download)})"
        )


def _check_norm(cfg: Config) -> None:
    """norm_mean and norm_std: both or neither, one finite value per input channel, std > 0."""
    mean, std = cfg.norm_mean, cfg.norm_std
    if not mean and not std:
        return
    channels = DATASETS[cfg.dataset].info.in_chans
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"config keys norm_mean/norm_std: {mean} and {std} must give one value per channel of "
                         f"{cfg.dataset} ({channels}), e.g. --norm-mean {','.join(['0.5'] * channels)} --norm-std "
                         f"{','.join(['0.25'] * channels)}")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise UsageError(f"config keys norm_mean/norm_std: {mean} and {std} must be finite, each std > 0")


def _check_objective(cfg: Config) -> None:
    """infopro_lambdas: four finite weights >= 0. An objective that reads the input images at every module
    (InfoPro) cannot train on cached features (cache on)."""
    lambdas = cfg.infopro_lambdas
    if len(lambdas) != 4 or not all(math.isfinite(v) and v >= 0 for v in lambdas):
        raise UsageError(f"config key 'infopro_lambdas': {lambdas} must be 4 finite weights >= 0: lambda1, lambda2 "
                         "of the first module, then of the module before the last (e.g. --infopro-lambdas 5,1,0,1)")
    if not OBJECTIVES[cfg.objective].needs_input:
        return
    if cfg.cache == "on" and cfg.mode == "greedy":
        raise UsageError(f"config key 'cache': on trains on the frozen prefix's cached features, but objective "
                         f"{cfg.objective} reconstructs the input images at every module; pass --cache off")


def _check_head_options(cfg: Config) -> None:
    """A head setting given (not its default) that no auxiliary net of the run reads is refused: `--k 3 --aux
    mlp_sr` would otherwise train the same net as k 2 and be labelled k=3."""
    unread = unread_keys(cfg)
    for key in [key for key in HEAD_OPTIONS if key in unread]:
        takers = [name for name in HEADS if reads(name, key)]
        used = f"aux {cfg.aux}, final_head {cfg.final_head}" + (" in mode e2e" if cfg.mode == "e2e" else "")
        raise UsageError(f"config key '{key}': {getattr(cfg, key)} is read by no auxiliary net of this run ({used}), "
                         f"only by {', '.join(takers)}; drop the key (default {key_default(key)}) or pass --aux "
                         f"{takers[0]}")


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
    if cfg.objective in ("man", "man_pp"):
        raise UsageError(f"config key 'pipeline': objective {cfg.objective} reads the next module's first unit at "
                         f"every step, which another group of the pipeline holds; pass --pipeline 1 (decoupled on "
                         f"one process or data-parallel) or another objective")
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
    during = choices("probes")  # the families that can probe during training
    for name in cfg.probes:
        if name not in during:
            raise UsageError(f"config key 'probes': {name!r} is not a probe during training; "
                             f"{did_you_mean(name, during)}choose from "
                             f"{', '.join(during)}")
    if cfg.probe_every and not cfg.probes:
        raise UsageError(f"config key 'probes': empty while probe_every is {cfg.probe_every}; name at least one "
                         f"({', '.join(during)}) or pass --probe-every 0")
    if cfg.probe_every and cfg.pipeline > 1:
        raise UsageError(f"config key 'probe_every': probes during training need the whole net in one process, but "
                         f"--pipeline {cfg.pipeline} spreads its blocks; drop --probe-every (probe the finished run "
                         "with evaluate.py --analysis) or --pipeline")


def _check_optimizer(cfg: Config) -> None:
    """Build the optimizer and scheduler once, with the trainer's own factories, on a dummy layer: timm's own
    checks, before any work."""
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
    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for error()'s hints
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> typing.NoReturn:
        """One line, with a hint for the usual slips: an unknown flag gets the nearest real one in its dashed
        spelling (`--batchsize` -> `--batch-size`), a bare YAML path gets `-c`, and a list given as separate words
        (`--widths 32 32`) gets its one comma-separated value (`--widths 32,32`)."""
        hint = ""
        if message.startswith("unrecognized arguments:"):
            hint = self._hint(message.split(":", 1)[1].split())
        raise UsageError(f"{message}{hint}; see `{self.prog} --help`")

    def _hint(self, unknown: list[str]) -> str:
        flags = [o for action in self._actions for o in action.option_strings if o.startswith("--") and "_" not in o]
        argv = getattr(self, "_argv", [])
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=")[0], flags, n=1)
                if close:
                    return f"; did you mean {close[0]}?"
            elif arg.endswith((".yaml", ".yml")):
                return f"; pass the config with -c: -c {arg}"
            elif arg in argv:  # a second word after a flag's value: a list given with spaces
                i = len(argv) - 1 - argv[::-1].index(arg)
                j = max((n for n in range(i) if argv[n].startswith("-")), default=None)
                if j is not None and all(not a.startswith("-") for a in argv[j + 1:i + 1]):
                    return (f"; a flag takes one word: lists are comma-separated ({argv[j]} "
                            f"{','.join(argv[j + 1:i + 1])})")
        return ""


def _metavar(key: str) -> str:
    """What a flag's value looks like: its choices ({a,b}), or its type (N, X, NAME, N,N,..., true|false)."""
    allowed = choices(key)
    tp, _ = _base_type(_TYPES[key])
    if allowed is not None:
        return "{" + ",".join(allowed) + "}" + (",..." if typing.get_origin(tp) is list else "")
    if tp is bool:
        return "true|false"
    if typing.get_origin(tp) is list:
        return "N,N,..." if typing.get_args(tp) == (int,) else "NAME,..."
    return {int: "N", float: "X"}.get(tp, "NAME")


def _help(key: str, default: Any) -> str:
    """The key's line of `--help`: its meaning from the schema and its `default`."""
    if isinstance(default, list):
        shown = ",".join(map(str, default)) or "empty"
    else:
        shown = str(default).lower() if default is None or isinstance(default, bool) else str(default)
    return f"{FIELDS[key].metadata['help']} (default: {shown})".replace("%", "%%")


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--key value` flag per config key, grouped as the schema groups them, each with its meaning, its
    default and its choices (defaults None here: only what is given overrides the YAML file)."""
    usage = parser.format_usage().removeprefix("usage: ").strip()
    parser.usage = f"{usage} [--KEY VALUE ...]"
    defaults = Config().to_dict()
    groups = {title: parser.add_argument_group(f"{title} (config keys; flags override the YAML file)")
              for title in GROUPS}
    for name, f in FIELDS.items():
        tp, _ = _base_type(_TYPES[name])
        kwargs: dict[str, Any] = {"default": None, "dest": name, "metavar": _metavar(name),
                                  "help": _help(name, defaults[name])}
        if tp is bool:  # `--wandb`-style bare flags mean true
            kwargs.update(nargs="?", const="true")
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        groups[f.metadata["group"]].add_argument(*flags, **kwargs)
    groups["run"].add_argument("--wandb", dest="tracker", action="store_const", const="wandb",
                               help="same as --tracker wandb")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    # No abbreviations: `--epoch 3` must be an error, not silently `--epochs 3`.
    return _OneLineParser(prog=prog, description=description, allow_abbrev=False)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line, checked and converted."""
    return {name: coerce(name, getattr(args, name)) for name in FIELDS if getattr(args, name) is not None}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
