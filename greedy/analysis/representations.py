"""Intermediate representations of a GreedyNet on fixed, seeded subsets of the train and test sets.

A layer's representation is its output average-pooled to a pool x pool map (as the paper's auxiliary heads
see it; pool 0 keeps the full map), flattened to one vector per sample. Layers are the input (depth 0, a
reference: kept at full resolution up to INPUT_MAX_DIM values), the block outputs and, optionally, the hidden
layers (the ConvBlocks before the pooling) of every auxiliary head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from greedy.models import GreedyNet
from greedy.models.heads import AuxiliaryHead

INPUT_MAX_DIM = 4096  # the input layer is average-pooled only when it has more values than this


@dataclass(frozen=True)
class Layer:
    """One probed layer: `name` (block2, head2.conv1), 1-based block `depth`, and its role."""

    name: str
    depth: int
    kind: str  # "input" | "block" | "head"
    hidden: int = 0  # 1-based index of a head's hidden layer; 0 for a block


@dataclass
class Sample:
    """A fixed subset of a dataset: inputs, labels and the indices they were drawn at."""

    x: torch.Tensor
    y: torch.Tensor
    indices: list[int]


@dataclass
class Representations:
    """Pooled, flattened features of every layer on the train and test samples (float32, CPU)."""

    layers: list[Layer]
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    y_train: torch.Tensor
    y_test: torch.Tensor
    shapes: dict[str, list[int]] = field(default_factory=dict)  # unpooled C x H x W of each layer

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def seeded_sample(dataset: Dataset, n: int, seed: int) -> Sample:
    """min(n, len) items of `dataset` drawn without replacement by a seeded permutation (so any prefix is too)."""
    total = len(dataset)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=gen)[: min(n, total)].tolist()
    items = [dataset[i] for i in idx]
    x = torch.stack([item[0] for item in items])
    y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    return Sample(x, y, idx)


def probe_layers(net: GreedyNet, heads: bool = False) -> list[Layer]:
    """The layers probed: the input, every block output, then (with heads) each head's hidden layers after its block."""
    layers = [Layer("input", 0, "input")]
    for j, head in enumerate(net.heads):
        layers.append(Layer(f"block{j + 1}", j + 1, "block"))
        if heads:
            layers.extend(Layer(f"head{j + 1}.conv{i + 1}", j + 1, "head", i + 1) for i in range(_n_hidden(head)))
    return layers


def _n_hidden(head: nn.Module) -> int:
    """Hidden conv layers of an auxiliary head (none for other head types)."""
    return len(head.convs) if isinstance(head, AuxiliaryHead) else 0


def pool_map(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool an N x C x H x W map to N x C x pool x pool (pool 0: unchanged), flattened to N x D."""
    if pool > 0 and x.ndim == 4 and (x.shape[2] > pool or x.shape[3] > pool):
        x = F.adaptive_avg_pool2d(x, (min(pool, x.shape[2]), min(pool, x.shape[3])))
    return x.reshape(x.shape[0], -1)


def pool_input(x: torch.Tensor, max_dim: int = INPUT_MAX_DIM) -> torch.Tensor:
    """Flatten the input, average-pooled to the largest s x s map with C*s*s <= max_dim only if it is larger."""
    if x.ndim == 4 and x[0].numel() > max_dim:
        side = max(1, math.isqrt(max_dim // x.shape[1]))
        x = F.adaptive_avg_pool2d(x, (min(side, x.shape[2]), min(side, x.shape[3])))
    return x.reshape(x.shape[0], -1)


def iter_layer_outputs(net: GreedyNet, x: torch.Tensor, layers: list[Layer]) -> Iterator[tuple[Layer, torch.Tensor]]:
    """Run the net on one batch and yield (layer, unpooled output) in the order of `layers` (the blocks after the
    deepest wanted layer are not run)."""
    wanted = {layer.name for layer in layers}
    if "input" in wanted:
        yield Layer("input", 0, "input"), x
    h = net.stem(x)
    deepest = max((layer.depth for layer in layers), default=0)
    for j, block in enumerate(net.blocks[:deepest]):
        h = block(h)
        if f"block{j + 1}" in wanted:
            yield Layer(f"block{j + 1}", j + 1, "block"), h
        z = h
        for i in range(_n_hidden(net.heads[j])):
            z = net.heads[j].convs[i](z)
            name = f"head{j + 1}.conv{i + 1}"
            if name in wanted:
                yield Layer(name, j + 1, "head", i + 1), z


@torch.no_grad()
def extract(net: GreedyNet, x: torch.Tensor, layers: list[Layer], pool: int,
            batch_size: int = 256) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Pooled, flattened outputs of `layers` on x (batched, on the net's device), and their unpooled shapes."""
    device = _device(net)
    chunks: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    shapes: dict[str, list[int]] = {}
    for start in range(0, x.shape[0], batch_size):
        for layer, out in iter_layer_outputs(net, x[start:start + batch_size].to(device), layers):
            shapes[layer.name] = list(out.shape[1:])
            flat = pool_input(out.float()) if layer.kind == "input" else pool_map(out.float(), pool)
            chunks[layer.name].append(flat.cpu())
    return {name: torch.cat(parts) for name, parts in chunks.items()}, shapes


def representations(net: GreedyNet, train: Sample, test: Sample, pool: int, heads: bool = False,
                    batch_size: int = 256, only: Sequence[str] | None = None) -> Representations:
    """Extract every probed layer (those named in `only`, if given) of the (eval-mode) net on the train and test
    samples."""
    net.eval()
    layers = [la for la in probe_layers(net, heads) if only is None or la.name in only]
    feats_train, _ = extract(net, train.x, layers, pool, batch_size)
    feats_test, shapes = extract(net, test.x, layers, pool, batch_size)
    return Representations(layers, feats_train, feats_test, train.y, test.y, shapes)


def block_prefix(net: GreedyNet, depth: int) -> nn.Sequential:
    """The net up to the output of block `depth` (1-based): stem and blocks 0..depth-1."""
    return nn.Sequential(net.stem, *net.blocks[:depth])


def head_model(net: GreedyNet, depth: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> logits of head `depth` (1-based) on its block: the model assembled after that stage."""
    return nn.Sequential(block_prefix(net, depth), net.heads[depth - 1])


def _device(net: nn.Module) -> torch.device:
    """The device of the net's parameters (CPU for a parameterless module)."""
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
