"""What training one (mode, k) of a config costs: FLOPs per image counted by `FlopCounterMode` (forward and
backward of every trained part, the frozen prefix once per stage when cached), and the activation bytes autograd
saves for backward in one step (`greedy.profiling.saved_tensor_bytes`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from greedy.builder import GreedyBuilder
from greedy.cache import autocast_dtype, cache_enabled
from greedy.datasets import create_datasets, dataset_info
from greedy.errors import UsageError
from greedy.models import GreedyNet, create_greedy_net
from greedy.objectives import total_loss
from greedy.profiling import saved_tensor_bytes
from greedy.schema import Config

# Training-set sizes, for when the data is not on this machine (--plan): digits is the fixed seeded split.
TRAIN_SIZES = {"digits": 1437, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
               "imagenet": 1_281_167, "fake": 512}


@dataclass
class Cost:
    """What training one (mode, k) costs; FLOPs as FlopCounterMode counts them (2 per multiply-add)."""

    step_flops: float  # optimisation steps: forward + backward, over all epochs and blocks
    cache_flops: float  # greedy with the feature cache: the frozen prefix's forward, once per stage
    images_per_block: int  # training images each block is fit on (passes x training-set size)
    peak_activation_bytes: int  # bytes saved for backward in one training step, max over stages / parts
    epochs: int
    cached: bool
    piece_activation_bytes: tuple[int, ...] = ()  # the same, per greedy stage / decoupled part (e2e: one)
    auxiliary_params: int = 0  # auxiliary nets of modules 1..K-1 and the objectives' own modules (e2e: 0)

    @property
    def train_flops(self) -> float:
        return self.step_flops + self.cache_flops


def train_size(cfg: Config) -> int:
    """Training images (without the validation split): counted from the data when it is here, else the data set's
    standard size less round(val_split x it) (the stratified split rounds per class: within a few images)."""
    try:
        return len(create_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment="none",
                                   val_split=cfg.val_split, split_seed=cfg.seed).train)
    except UsageError:
        if cfg.dataset not in TRAIN_SIZES:
            raise
        return TRAIN_SIZES[cfg.dataset] - round(cfg.val_split * TRAIN_SIZES[cfg.dataset])


def _net(cfg: Config, device: str) -> tuple[GreedyNet, tuple[int, int, int], int]:
    """The config's net on `device`, the input shape (C, H, W) and the number of classes."""
    info = dataset_info(cfg.dataset)
    size = cfg.img_size or info.img_size
    num_classes = cfg.num_classes or info.num_classes
    with torch.device(device):
        net = create_greedy_net(cfg, num_classes=num_classes, in_chans=info.in_chans)
    return net, (info.in_chans, size, size), num_classes


def _flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _backprop(part: nn.Module, x: torch.Tensor, y: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Forward of one trainable part with its local objective (on the input images `image` where it reads them),
    backward of its loss; its output (detached) for the next part."""
    h, _, terms = part(x, y, image)
    total_loss(terms).backward()
    return h.detach()


def _pieces(cfg: Config, net: GreedyNet, shape: tuple[int, int, int]) -> list[tuple[nn.Module, nn.Module]]:
    """(frozen prefix, trainable part) of every separately backpropagated piece of the config's training, each
    part with the config's local objective (its modules counted; built on the net's device).

    greedy: one per stage; e2e: the whole net (with grad_checkpoint: its units recomputed in backward);
    decoupled: one per block, its input the detached output of the previous block, which is what the frozen
    prefix computes (the trainer's `decoupled_step` frees each part's graph with its own backward before the
    next part runs).
    """
    stats = (0.5,) * shape[0]  # the normalization changes no cost
    with torch.device(next(net.parameters()).device):
        builder = GreedyBuilder.for_config(cfg, net, shape, stats, stats)
    if cfg.mode == "e2e":
        stage = builder.stage(0)
        return [(stage.prefix, stage.trainable)]
    if cfg.mode == "decoupled":
        return [(net.prefix(j).eval(), part) for j, part in enumerate(builder.stage(0).parts)]
    return [(s.prefix, s.trainable) for s in map(builder.stage, range(builder.num_stages))]


def auxiliary_params(cfg: Config) -> int:
    """Parameters trained only to train the net: the auxiliary nets of modules 1..K-1 and the local objectives'
    own modules (e2e: none; every local method trains the same net with more of them)."""
    if cfg.mode == "e2e":
        return 0
    net, shape, _ = _net(cfg, "meta")
    heads = sum(p.numel() for head in net.heads[:-1] for p in head.parameters())
    with torch.device("meta"):
        objectives = GreedyBuilder.for_config(cfg, net, shape).objectives
    return heads + sum(p.numel() for o in objectives for p in o.parameters())


def _trainable(part: nn.Module) -> nn.Module:
    """The part as its step trains it: gradients on, BatchNorm in training mode (building later stages froze it)."""
    return part.requires_grad_(True).train()


def flops_per_image(cfg: Config, batch: int = 2) -> list[tuple[float, float]]:
    """(prefix forward, trainable forward + backward) FLOPs per image of each piece of the config's training
    (its mode, local objective and checkpointing), on meta tensors (free at any batch) of `batch` images."""
    net, shape, _ = _net(cfg, "meta")
    x = torch.zeros(batch, *shape, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    result = []
    for prefix, part in _pieces(cfg, net, shape):
        _trainable(part)
        with torch.no_grad():
            prefix_flops = _flops(lambda p=prefix: p(x))
            h = prefix(x)
        result.append((prefix_flops / batch, _flops(lambda p=part, h=h: _backprop(p, h, y, x)) / batch))
    return result


def _saved_bytes(prefix: nn.Module, part: nn.Module, shape: tuple[int, ...], batch: int, num_classes: int,
                 autocast: torch.dtype | None) -> int:
    """Activation bytes one training step of `part` (with its local objective) saves for backward, on a random CPU
    batch.

    Only the part is materialized (its values do not matter, only its shapes); its input is a random tensor
    of the frozen prefix's output shape, which runs without a graph and saves nothing.
    """
    with torch.no_grad():
        in_shape = prefix(torch.zeros(batch, *shape, device="meta")).shape
    part = _trainable(copy.deepcopy(part).to_empty(device="cpu"))
    for p in part.parameters():
        torch.nn.init.normal_(p.data, std=0.01)
    for b in part.buffers():  # BatchNorm statistics, InfoPro's normalization: any finite values
        b.data.fill_(1)
    x = torch.randn(in_shape)
    image = torch.randn(batch, *shape)
    y = torch.randint(0, num_classes, (batch,))
    weights = [*part.parameters(), *part.buffers()]

    def step() -> None:
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            _, _, terms = part(x, y, image)
        total_loss(terms).backward()

    return saved_tensor_bytes(step, weights)


def piece_activation_bytes(cfg: Config, batch: int | None = None) -> list[int]:
    """Bytes saved for backward in one training step at the config's batch size, per separately backpropagated
    piece: each greedy stage (block j + head j + its objective's modules), each decoupled part, or the whole e2e
    net (InfoPro's way of reporting the memory of local learning, Wang et al. ICLR 2021).

    Measured at batches of 2, 4 and 6 and extrapolated: saved activations are at most quadratic in the batch size
    B (per-image tensors and per-channel BatchNorm statistics are affine; a local objective's B x B similarity
    matrices, PredSim's and the contrastive loss's, quadratic), so Newton's interpolation through the three
    equals a direct measurement at full batch.
    """
    batch = batch or cfg.batch_size
    net, shape, num_classes = _net(cfg, "meta")
    autocast = autocast_dtype(cfg)
    result = []
    for prefix, part in _pieces(cfg, net, shape):
        f2, f4, f6 = (_saved_bytes(prefix, part, shape, b, num_classes, autocast) for b in (2, 4, 6))
        first, second = f4 - f2, f6 - 2 * f4 + f2  # forward differences at step 2
        result.append(f2 + (batch - 2) * first // 2 + (batch - 2) * (batch - 4) * second // 8)
    return result


def activation_bytes(cfg: Config, batch: int | None = None) -> int:
    """Peak bytes saved for backward in one training step at the config's batch size, max over the pieces."""
    return max(piece_activation_bytes(cfg, batch))


def measure_cost(cfg: Config, n_train: int) -> Cost:
    """Training FLOPs, images per block and peak activation bytes of a run of `cfg` (its mode and epochs)."""
    mode, epochs = cfg.mode, cfg.train_epochs
    pieces = flops_per_image(cfg, cfg.batch_size)  # at the real batch: PredSim's, SupCon's B x B terms grow as B^2
    cached = mode == "greedy" and cache_enabled(cfg, say=lambda _: None)
    trained = sum(train for _, train in pieces)
    if cached:  # stage j trains on stored features; the prefix is advanced one block per stage, once in all
        step, cache = trained, pieces[-1][0]
    elif mode == "greedy":  # every step of stage j runs the frozen prefix forward
        step, cache = trained + sum(prefix for prefix, _ in pieces), 0.0
    else:  # e2e, decoupled: only the stem runs outside the trained parts (decoupled parts get detached inputs)
        step, cache = trained + pieces[0][0], 0.0
    step, cache = step * n_train * epochs, cache * n_train
    pieces_bytes = tuple(piece_activation_bytes(cfg))
    return Cost(step, cache, n_train * epochs, max(pieces_bytes), epochs, cached, pieces_bytes, auxiliary_params(cfg))
