"""The layers a greedy net is made of: invertible downsampling and the conv block."""

from __future__ import annotations

from torch import nn

SpaceToDepth = nn.PixelUnshuffle  # invertible 2x downsampling: C x H x W -> 4C x H/2 x W/2


def downsampling(mode: str | None) -> tuple[nn.Module, int]:
    """The downsampling layer for `mode` and the factor it multiplies the channels by."""
    if mode is None:
        return nn.Identity(), 1
    if mode == "space_to_depth":
        return SpaceToDepth(2), 4
    if mode == "maxpool":
        return nn.MaxPool2d(2), 1
    raise ValueError(f"unknown downsampling mode {mode!r}")


class ConvBlock(nn.Module):
    """[2x downsampling] -> Conv3x3 -> [BatchNorm] -> ReLU: one layer grown by the builder."""

    def __init__(self, in_chans: int, out_chans: int, *, downsample: str | None = None, batchnorm: bool = True):
        super().__init__()
        self.downsample, factor = downsampling(downsample)
        # Without BatchNorm the conv keeps its bias: nothing else would give the unit an offset.
        self.conv = nn.Conv2d(in_chans * factor, out_chans, 3, padding=1, bias=not batchnorm)
        self.bn = nn.BatchNorm2d(out_chans) if batchnorm else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(self.downsample(x))))
