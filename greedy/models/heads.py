"""Auxiliary nets: each kind is one class registered in `greedy.registry.HEADS` under the name the config's `aux` and
`final_head` keys use.

    cnn      the paper's (Belilovsky et al. 2019): (k-1) conv layers, pool, linear
    mlp      DGL's (Belilovsky, Eickenberg, Oyallon 2020): pool to 2x2, 3-hidden-layer MLP
    mlp_sr   DGL's: pool to a quarter of the size, three 1x1 conv layers, pool to 2x2, 3-hidden-layer MLP
    linear   a ResNet's own classifier: global average pool, Linear
    vgg      the standard VGG classifier
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from greedy.models.blocks import ConvBlock
from greedy.registry import HEADS


def create_head(kind: str, in_chans: int, num_classes: int, **options) -> nn.Module:
    """The auxiliary net `kind` on an N x in_chans x H x W input -> N x num_classes logits.

    `options` are the config's head settings (k, width, pool_size, batchnorm); each kind takes those its
    constructor names and ignores the rest.
    """
    cls = HEADS.get(kind)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(in_chans, num_classes, **{key: value for key, value in options.items() if key in accepted})


def _mlp(in_features: int, hidden: int, num_classes: int, layers: int, batchnorm: bool) -> nn.Sequential:
    """`layers` x [Linear -> BatchNorm1d -> ReLU] of width `hidden`, then Linear to the classes."""
    mods = []
    for i in range(layers):
        mods += [nn.Linear(in_features if i == 0 else hidden, hidden),
                 nn.BatchNorm1d(hidden) if batchnorm else nn.Identity(), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(hidden if layers else in_features, num_classes))


@HEADS.register("cnn")
class AuxiliaryHead(nn.Module):
    """(k-1) x [Conv3x3-BN-ReLU] -> avg-pool to pool_size^2 -> BN -> flatten -> Linear (Belilovsky et al. 2019).

    With the block it sits on, the auxiliary problem has k hidden layers; k=1 is a linear classifier
    on the pooled block output.
    """

    def __init__(self, in_chans: int, num_classes: int, *, k: int = 2, width: int | None = None,
                 pool_size: int = 2, batchnorm: bool = True):
        super().__init__()
        width = width or in_chans
        self.convs = nn.Sequential(*[
            ConvBlock(in_chans if i == 0 else width, width, batchnorm=batchnorm) for i in range(k - 1)
        ])
        out_chans = width if k > 1 else in_chans
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.bn = nn.BatchNorm2d(out_chans) if batchnorm else nn.Identity()
        self.fc = nn.Linear(out_chans * pool_size * pool_size, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.pool(self.convs(x))).flatten(1))


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """DGL's MLP auxiliary net (Belilovsky, Eickenberg, Oyallon, ICML 2020): average-pool to pool_size^2 (2x2),
    flatten (C * 4 features), 3 x [Linear-BN-ReLU] of width `width` (default: C * 4), Linear to the classes.
    N x C x H x W -> N x num_classes."""

    def __init__(self, in_chans: int, num_classes: int, *, width: int | None = None, pool_size: int = 2,
                 batchnorm: bool = True, layers: int = 3):
        super().__init__()
        features = in_chans * pool_size * pool_size
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.mlp = _mlp(features, width or features, num_classes, layers, batchnorm)

    def forward(self, x):
        return self.mlp(self.pool(x).flatten(1))


@HEADS.register("mlp_sr")
class MLPSRHead(nn.Module):
    """DGL's MLP-SR auxiliary net (ICML 2020): average-pool to a quarter of the input's spatial size
    (ceil(H/4) x ceil(W/4)), 3 x [Conv1x1-BN-ReLU] of width `width` (default: C), average-pool to pool_size^2 (2x2),
    then the MLP of `MLPHead`. N x C x H x W -> N x num_classes."""

    def __init__(self, in_chans: int, num_classes: int, *, width: int | None = None, pool_size: int = 2,
                 batchnorm: bool = True, layers: int = 3):
        super().__init__()
        width = width or in_chans
        self.convs = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_chans if i == 0 else width, width, 1, bias=not batchnorm),
                          nn.BatchNorm2d(width) if batchnorm else nn.Identity(), nn.ReLU())
            for i in range(layers)
        ])
        features = width * pool_size * pool_size
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.mlp = _mlp(features, features, num_classes, layers, batchnorm)

    def forward(self, x):
        reduced = nn.functional.adaptive_avg_pool2d(x, (math.ceil(x.shape[-2] / 4), math.ceil(x.shape[-1] / 4)))
        return self.mlp(self.pool(self.convs(reduced)).flatten(1))


@HEADS.register("linear")
class LinearClassifier(nn.Module):
    """A ResNet's own classifier (He et al. 2016): global average pool -> Linear. N x C x H x W -> N x classes."""

    def __init__(self, in_chans: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chans, num_classes)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


@HEADS.register("vgg")
class VGGClassifier(nn.Module):
    """The standard VGG classifier (max-pool, 7x7 pooling, two 4096-wide hidden layers) as a last head."""

    def __init__(self, in_chans: int, num_classes: int, *, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(7))
        self.mlp = nn.Sequential(
            nn.Linear(in_chans * 49, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.mlp(self.pool(x).flatten(1))
