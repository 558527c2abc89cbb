"""The config schema: every key of a run, its type, default, meaning, group and allowed values.

One dataclass, flat keys (each is also a `--key value` flag). Each key is declared with its group's helper
(`_run(...)`, `_data(...)`, ...), which records in the field's metadata the one line of help that `train.py --help`
shows and, where the key has them, its choices: a tuple, or a registry of greedy/registry.py (filled by the
implementations, read when checked). Loading, coercion, validation and the command line are greedy/config.py's.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from greedy.datasets.transforms import AUGMENTATIONS
from greedy.registry import DATASETS, HEADS, OBJECTIVES, PROBES

MODES = ("greedy", "e2e", "decoupled")
# timm schedulers whose learning rate is a function of the epoch alone ('plateau' needs a metric, 'none' no LR)
SCHEDULERS = ("step", "multistep", "cosine", "tanh", "poly", "constant", "wsd", "rsqrt")
# Keys that may differ on --resume: they change how a run executes, not what it computes.
RESUME_MUTABLE = ("no_progress", "num_workers", "pin_memory", "persistent_workers", "data_dir", "cache_budget_gb",
                  "cache_device_gb", "log_every", "strict_data", "finite_check_every", "pipeline_timeout")
# The groups of keys, in the order of the README and of `train.py --help`.
GROUPS = ("run", "data", "model", "auxiliary problem", "local objective", "optimization", "speed", "pipeline", "probes")
AUTO_ON_OFF = ("auto", "on", "off")

Choices = tuple[str, ...] | Callable[[], tuple[str, ...]] | None


def _group(title: str) -> Callable[..., Any]:
    """The field helper of one group: `key(default, help, choices=None)` -> a dataclass field with metadata."""
    def key(default: Any, help: str, choices: Any = None) -> Any:
        meta = {"group": title, "help": help, "choices": choices}
        if isinstance(default, list):
            return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
        return field(default=default, metadata=meta)
    return key


_run, _data, _model, _aux, _objective, _optim, _speed, _pipe, _probe = (_group(title) for title in GROUPS)


@dataclass
class Config:
    """Every knob of a run. Keys are flat so that each one is also a `--key value` flag."""

    # run
    name: str | None = _run(None, "run directory name under out_dir; none: <config>-<mode>-<time>")
    out_dir: str = _run("runs", "folder that holds the run directories")
    mode: str = _run("greedy", "greedy: block j trains on its auxiliary problem, earlier blocks frozen; e2e: the "
                    "whole net on the last head; decoupled: every block at once on its own local loss (DGL)", MODES)
    seed: int = _run(0, "seed of weights, shuffling and augmentation")
    experiment: str | None = _run(None, "W&B group shared by the runs of one comparison")
    tracker: str = _run("none", "where metrics go besides metrics.jsonl (--wandb: same as --tracker wandb)",
                       ("none", "wandb"))
    log_every: int = _run(50, "steps between per-step W&B logs (each costs a device sync); epochs are always logged")
    wandb_project: str = _run("greedy", "W&B project")
    no_progress: bool = _run(False, "no progress bars")

    # data
    dataset: str = _data("digits", "data set (fake: random images, for timing)", DATASETS)
    data_dir: str = _data("data", "folder of the data set's files")
    download: bool = _data(False, "fetch fashion_mnist / cifar10 / cifar100 into data_dir when missing")
    img_size: int | None = _data(None, "image side in pixels; none: the data set's")
    num_classes: int | None = _data(None, "classes; none: the data set's")
    norm_mean: list[float] = _data([], "per-channel mean the images are normalized with, for pixel values in [0, 1]; "
                                   "empty: the data set's published one (imagenet: timm's ImageNet statistics) or "
                                   "its training split's")
    norm_std: list[float] = _data([], "per-channel std, as norm_mean")
    val_split: float = _data(0.0, "fraction of the training set held out as a validation split (stratified, seeded "
                             "by seed): per-epoch evaluation and every selection use it, the test set is evaluated "
                             "once at the end; 0: none (per-epoch evaluation on the test set)")
    augment: str = _data("none", "training augmentation: crop_flip (pad 4, random crop, flip) for in-memory data, "
                        "imagenet (random resized crop, flip) for image folders", AUGMENTATIONS)
    device_data: str = _data("auto", "hold the data set on the accelerator and augment batches there (auto: every "
                            "data set but imagenet; off: a DataLoader with per-image transforms)", AUTO_ON_OFF)
    num_workers: int | None = _data(None, "DataLoader workers per process; none: imagenet one per CPU core of the "
                                   "node's share (at most 8), in-memory data 0")
    pin_memory: bool = _data(True, "page-locked batches and non-blocking copies (with a GPU)")
    persistent_workers: bool = _data(True, "keep loader workers alive across the epochs of a stage")
    strict_data: bool = _data(False, "an unreadable image stops the run (exit 2) instead of being skipped and "
                             "reported")

    # architecture (data, not code: every shipped model is one of these)
    arch: str = _model("plain", "plain: conv blocks (Belilovsky et al. 2019); resnet: CIFAR ResNet (He et al. "
                      "2016); timm: any timm CNN cut into local modules", ("plain", "resnet", "timm"))
    model: str | None = _model(None, "arch timm: the timm model's name (resnet50, convnext_atto, ...)")
    pretrained: bool = _model(False, "arch timm: start from timm's pretrained weights (Hugging Face hub)")
    block: str = _model("basic", "resnet's residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1, 4x "
                       "channels)", ("basic", "bottleneck"))
    shortcut: str = _model("A", "resnet's shortcut where the shape changes: A (subsample, zero channels) or B (1x1 "
                          "conv + BN)", ("A", "B"))
    depths: list[int] = _model([], "resnet: residual blocks per stage (5,5,5: ResNet-32)")
    stem_width: int | None = _model(None, "resnet: width of the stem conv3x3; none: widths[0]")
    num_modules: int | None = _model(None, "K: local modules (blocks) the units are cut into, equal in FLOPs or in "
                                    "activation memory (split_by); none: one per unit")
    split_by: str = _model("flops", "num_modules: balance the modules' forward FLOPs, or their activation memory "
                           "(memory: earlier cuts where the feature maps are large, as InfoPro*)", ("flops", "memory"))
    split_points: list[int] = _model([], "explicit cut: 0-based units that start a local module")
    input_downsample: bool = _model(False, "space-to-depth the input once (ImageNet: 3x224x224 -> 12x112x112)")
    widths: list[int] = _model([64, 64, 128], "plain: channels of each conv block; resnet: of each stage")
    downsample: list[int] = _model([], "plain: 1-based blocks preceded by 2x downsampling")
    downsample_mode: str = _model("space_to_depth", "plain: how to downsample: space_to_depth (invertible) or "
                                 "maxpool (VGG)", ("space_to_depth", "maxpool"))
    batchnorm: bool = _model(True, "BatchNorm in plain conv blocks and auxiliary nets (ResNet blocks always have it)")

    # auxiliary problem
    k: int = _aux(2, "hidden layers of each auxiliary problem, the block counted (aux cnn)")
    aux_width: int | None = _aux(None, "width of the auxiliary convs; none: the block's width")
    pool_size: int = _aux(2, "auxiliary nets average-pool to pool_size x pool_size")
    aux: str = _aux("cnn", "auxiliary net: cnn (k; the paper's), mlp, mlp_sr (DGL's), linear, vgg "
                   "(greedy/models/heads.py)", HEADS)
    final_head: str = _aux("auxiliary", "the last block's head: auxiliary (the aux kind), any auxiliary net, or timm "
                          "(arch timm: the timm model's own classifier)", lambda: ("auxiliary", *HEADS, "timm"))

    # local objective (greedy/objectives/, docs/OBJECTIVES.md)
    objective: str = _objective(
        "ce", "local objective of each module: ce (cross-entropy of the auxiliary net chosen by aux and k: greedy SL, "
        "DGL), predsim (Nokland & Eidnes 2019), infopro_ce / infopro_contrast (Wang et al. 2021), auglocal (Ma et al. "
        "2024), man / man_pp (Su et al. 2024, 2026); with any but ce "
        "the auxiliary net is a readout trained on the detached output", OBJECTIVES)
    predsim_beta: float = _objective(0.99, "predsim: weight of the similarity loss (1 - beta: the prediction loss)")
    predsim_dim: int = _objective(4096, "predsim: the prediction loss's linear layer sees the output average-pooled "
                                  "to at most this many features")
    infopro_lambdas: list[float] = _objective(
        [5.0, 1.0, 0.0, 1.0], "infopro: lambda1 (reconstruction), lambda2 (task) of the first module, then of the "
        "module before the last; interpolated linearly in between (the paper's grid: configs/infopro/)")
    contrast_temperature: float = _objective(0.07, "infopro_contrast: temperature of the supervised contrastive loss")
    auglocal_depth: int = _objective(2, "auglocal: units in the first module's auxiliary net, copied from the net's "
                                     "later units (the paper: 2 for ResNet-32, 3 for ResNet-110)")
    auglocal_tau: float = _objective(0.5, "auglocal: pyramid coefficient; the depth shrinks linearly from "
                                     "auglocal_depth to about auglocal_depth * (1 - tau) + tau at the module before "
                                     "the last (0: every module auglocal_depth)")
    man_base: str = _objective("infopro_contrast", "man, man_pp: the objective computed on the momentum input "
                               "LB(h) + EMA(h)", ("infopro_contrast", "infopro_ce", "dgl"))
    man_momentum: float = _objective(0.995, "man, man_pp: momentum m of the EMA copy of the next module's first unit "
                                     "(theta_ema <- m theta_ema + (1 - m) theta, once per step)")

    # optimization, per stage (greedy) or for the whole net (e2e)
    epochs: int = _optim(10, "epochs per stage (greedy, decoupled)")
    e2e_epochs: int | None = _optim(None, "epochs of mode e2e; none: epochs")
    batch_size: int = _optim(128, "images per step and process")
    eval_batch_size: int | None = _optim(None, "images per evaluation step; none: batch_size")
    opt: str = _optim("momentum", "any timm optimizer (timm.optim.list_optimizers()); momentum: SGD without "
                     "Nesterov, as the paper")
    lr: float = _optim(0.1, "learning rate")
    momentum: float = _optim(0.9, "momentum of SGD-like optimizers")
    weight_decay: float = _optim(5e-4, "weight decay, on every parameter")
    sched: str = _optim("step", "timm LR schedule, stepped per epoch", SCHEDULERS)
    decay_epochs: float = _optim(15, "step/multistep: epochs between LR decays")
    decay_rate: float = _optim(0.2, "factor the LR is multiplied by at each decay")
    warmup_epochs: int = _optim(0, "epochs of linear LR warmup")

    # speed and memory
    mixed_precision: str = _speed("no", "autocast precision (fp16 needs a GPU)", ("no", "bf16", "fp16"))
    grad_accum: int = _speed(1, "batches whose gradients are summed per optimizer step")
    channels_last: bool = _speed(False, "NHWC memory format (faster convs on GPUs with tensor cores)")
    compile: bool = _speed(False, "torch.compile each trained part")
    grad_checkpoint: bool = _speed(False, "mode e2e: recompute each unit's activations during the backward pass "
                                   "(torch.utils.checkpoint per unit): less activation memory for more compute")
    cache: str = _speed("auto", "cache the frozen prefix's features (auto: when the train transform is "
                       "deterministic)", AUTO_ON_OFF)
    cache_budget_gb: float = _speed(4.0, "RAM for cached features, GiB; beyond it a memory-mapped file")
    cache_device_gb: float = _speed(4.0, "with device_data, accelerator memory for cached features, GiB; beyond it "
                                   "they stay in RAM")
    cache_dtype: str = _speed("auto", "dtype of cached features (auto: what the block computes in)",
                             ("auto", "fp32", "fp16", "bf16"))
    finite_check_every: int = _speed(1, "steps between checks that the loss is finite (each costs a device sync)")

    # pipelined decoupled training (greedy/pipeline.py)
    pipeline: int = _pipe(1, "mode decoupled: contiguous groups of blocks, one per process (processes = pipeline x "
                         "replicas); 1: every process holds every block")
    pipeline_split: list[int] = _pipe([], "blocks per group, summing to the blocks; empty: balanced by FLOPs")
    pipeline_timeout: float = _pipe(300.0, "seconds a process waits for a peer before it reports it lost")

    # probes during training (greedy/analysis/during.py, docs/ANALYSIS.md)
    probe_every: int = _probe(0, "epochs between probes of the block(s) being trained, and each stage's last epoch; "
                             "0: off")
    probes: list[str] = _probe(["linear", "clustering", "information"], "probe families run during training",
                               lambda: tuple(name for name in PROBES if PROBES[name].during))
    probe_samples: int = _probe(500, "seeded test subset probed, and a train subset of the same size the linear "
                               "probe is fit on")

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
    def held_out(self) -> str:
        """The split evaluated after every epoch and used for every selection: "val" with a val_split, else
        "test"; the per-epoch records name their accuracy after it (`val_acc`, `test_acc`)."""
        return "val" if self.val_split else "test"

    @property
    def on_device(self) -> bool:
        """Whether the data set is held on the accelerator (device_data on, or auto with an in-memory dataset)."""
        return self.device_data == "on" or (self.device_data == "auto" and DATASETS[self.dataset].in_memory)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def objective_options(cfg: Config) -> dict[str, Any]:
    """The settings of the local objectives (the keys of group 'local objective' but `objective` itself), as
    `objectives.create_objective` takes them."""
    return {name: getattr(cfg, name) for name, f in FIELDS.items()
            if f.metadata["group"] == "local objective" and name != "objective"}


def choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of `key` (of each element, for a list key), or None when any value of its type goes."""
    allowed = FIELDS[key].metadata["choices"]
    if allowed is None:
        return None
    return tuple(allowed()) if callable(allowed) else tuple(allowed)


# The config keys of the auxiliary nets' settings -> the constructor argument a head kind takes them as
HEAD_OPTIONS = {"k": "k", "aux_width": "width", "pool_size": "pool_size"}


def head_kinds(cfg: Config) -> list[str]:
    """The auxiliary-net kinds a run trains: `aux` on modules 1..K-1 (not in mode e2e, where only the last block's
    head learns), and the last block's head (`final_head`; `auxiliary` is the `aux` kind; timm's own classifier
    takes no setting)."""
    final = cfg.aux if cfg.final_head == "auxiliary" else cfg.final_head
    kinds = [] if cfg.mode == "e2e" else [cfg.aux]
    return kinds + ([final] if final != "timm" and final not in kinds else [])


def reads(kind: str, key: str) -> bool:
    """Whether the auxiliary net `kind`'s constructor takes the setting `key` (as heads.create_head passes it)."""
    return HEAD_OPTIONS[key] in inspect.signature(HEADS.get(kind).__init__).parameters


def head_takes(cfg: Config, key: str) -> bool:
    """Whether an auxiliary net the run trains reads the setting `key` (k, aux_width, pool_size)."""
    return any(reads(kind, key) for kind in head_kinds(cfg))


# Keys that one mode reads and the others refuse (a config file shared by the modes may still set them)
MODE_ONLY = {"grad_checkpoint": "e2e", "pipeline": "decoupled", "pipeline_split": "decoupled"}


def key_default(key: str) -> Any:
    """The default value of config key `key` (a fresh list for a list key)."""
    f = FIELDS[key]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def unread_keys(cfg: Config) -> dict[str, str]:
    """The keys `cfg` sets (not at their default) that this run reads nowhere, each with why: a key of another mode
    (MODE_ONLY) or an auxiliary-net setting no auxiliary net of the run takes (HEAD_OPTIONS). Validation refuses
    them; `shared_values` drops them from a shared config file."""
    unread = {}
    for key, mode in MODE_ONLY.items():
        if getattr(cfg, key) != key_default(key) and cfg.mode != mode:
            unread[key] = f"only mode {mode} reads it, this run is {cfg.mode}"
    for key in HEAD_OPTIONS:
        if getattr(cfg, key) != key_default(key) and not head_takes(cfg, key):
            unread[key] = (f"no auxiliary net of this run reads it: aux {cfg.aux}, final_head {cfg.final_head}"
                           + (" in mode e2e" if cfg.mode == "e2e" else ""))
    return unread


def shared_values(shared: dict[str, Any], given: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """The values of a run whose config file `shared` (checked values; a YAML file that several runs share, in
    other modes or with other auxiliary nets) is overridden by `given` (its command line, keyword overrides).

    A key the file sets that this run reads nowhere (`unread_keys`: `grad_checkpoint: true` in a run with --mode
    greedy, `k: 3` with --aux mlp_sr) is harmless there: it is dropped (the run keeps its default) and named in one
    warning line. The same key given for the run itself stays, for validation to refuse. Returns (values, the
    warning lines, e.g. "config key 'grad_checkpoint': True in configs/x.yaml is not read (only mode e2e reads it,
    this run is greedy); this run leaves it at False")."""
    values = {**shared, **given}
    try:
        cfg = Config(**values)
    except TypeError:  # an unknown key: its caller's check names it
        return values, []
    warnings = []
    for key, why in unread_keys(cfg).items():
        if key in shared and key not in given:
            warnings.append(f"config key '{key}': {shared[key]} in {where} is not read ({why}); this run leaves it "
                            f"at {key_default(key)}")
            del values[key]
    return values, warnings
