"""Auxiliary problems: the small classifiers that train each block."""

from __future__ import annotations

from torch import nn

from greedy.models.blocks import ConvBlock


class AuxiliaryHead(nn.Module):
    """(k-1) x [Conv3x3-BN-ReLU] -> avg-pool to pool_size^2 -> BN -> flatten -> Linear.

    With the block it sits on, the auxiliary problem has k hidden layers; k=1 is a linear classifier
    on the pooled block output.
    """

    def __init__(self, in_chans: int, num_classes: int, *, k: int, width: int | None = None,
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
