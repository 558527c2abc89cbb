"""The units a greedy net is made of: invertible downsampling, the conv block, ResNet's residual blocks."""

from __future__ import annotations

from collections.abc import Iterator

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


def conv_bn(in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias: BatchNorm follows) -> BatchNorm, as in every ResNet."""
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, kernel, stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_chans))


class ZeroPadShortcut(nn.Module):
    """He et al. 2016's option A (their CIFAR nets): identity, subsampled by `stride` (`x[:, :, ::2, ::2]`)
    and zero-padded with the extra channels. No parameters. N x C x H x W -> N x out_chans x H/s x W/s."""

    def __init__(self, in_chans: int, out_chans: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_chans - in_chans, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def shortcut(kind: str, in_chans: int, out_chans: int, stride: int) -> nn.Module:
    """The residual connection: identity where the shape is kept, else option A (zero padding, parameter-free)
    or option B (projection: 1x1 conv with the stride + BatchNorm), He et al. 2016, section 3.3."""
    if stride == 1 and in_chans == out_chans:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_chans, out_chans, stride)
    if kind == "B":
        return conv_bn(in_chans, out_chans, 1, stride)
    raise ValueError(f"unknown shortcut {kind!r} (A or B)")


class BasicBlock(nn.Module):
    """ResNet's basic residual block (He et al. 2016, Fig. 5 left): relu(bn(conv3x3(relu(bn(conv3x3(x))))) + s(x)).

    N x in_chans x H x W -> N x width x H/stride x W/stride.
    """

    expansion = 1

    def __init__(self, in_chans: int, width: int, stride: int = 1, shortcut_kind: str = "A"):
        super().__init__()
        self.conv1 = conv_bn(in_chans, width, 3, stride)
        self.conv2 = conv_bn(width, width, 3)
        self.shortcut = shortcut(shortcut_kind, in_chans, width, stride)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (He et al. 2016, Fig. 5 right): 1x1 (width) -> 3x3 (width, stride) ->
    1x1 (4 x width), each with BatchNorm, plus the shortcut; ReLU after the sum.

    N x in_chans x H x W -> N x 4*width x H/stride x W/stride.
    """

    expansion = 4

    def __init__(self, in_chans: int, width: int, stride: int = 1, shortcut_kind: str = "A"):
        super().__init__()
        out_chans = width * self.expansion
        self.conv1 = conv_bn(in_chans, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, out_chans, 1)
        self.shortcut = shortcut(shortcut_kind, in_chans, out_chans, stride)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(x))))) + self.shortcut(x))


RESIDUAL_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def resnet_units(in_chans: int, widths: list[int], depths: list[int], *, block: str = "basic",
                 shortcut_kind: str = "A", stem_width: int | None = None) -> Iterator[tuple[str, nn.Module]]:
    """The ordered units of a CIFAR-style ResNet (He et al. 2016, section 4.2): the stem conv3x3-BN-ReLU, then
    stage i of depths[i] residual blocks of width widths[i], the first block of every stage after the first with
    stride 2. Names: 'stem', 'stage1_block1', ... (a block's name says where it sits in the ResNet).
    A generator: each unit is built (and its weights drawn) when it is reached."""
    cls = RESIDUAL_BLOCKS[block]
    stem_width = stem_width or widths[0]
    yield "stem", nn.Sequential(*conv_bn(in_chans, stem_width, 3), nn.ReLU())
    chans = stem_width
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        for b in range(depth):
            stride = 2 if i > 0 and b == 0 else 1
            yield f"stage{i + 1}_block{b + 1}", cls(chans, width, stride, shortcut_kind)
            chans = width * cls.expansion


def plain_units(in_chans: int, widths: list[int], *, downsample: list[int] = (),
                downsample_mode: str = "space_to_depth", batchnorm: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """The ordered units of a plain net (Belilovsky et al. 2019): one ConvBlock per entry of widths, those whose
    1-based index is in `downsample` preceded by 2x downsampling. Names: 'block1', 'block2', ...
    A generator: each unit is built (and its weights drawn) when it is reached."""
    chans = in_chans
    for j, width in enumerate(widths):
        mode = downsample_mode if (j + 1) in downsample else None
        yield f"block{j + 1}", ConvBlock(chans, width, downsample=mode, batchnorm=batchnorm)
        chans = width
