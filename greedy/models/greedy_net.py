"""GreedyNet: the blocks and the auxiliary heads of a layerwise-trained CNN, built from a config."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models import register_model
from torch import nn

from greedy.config import Config, build_config, load_yaml
from greedy.errors import UsageError
from greedy.models.blocks import ConvBlock, SpaceToDepth
from greedy.models.heads import AuxiliaryHead, VGGClassifier

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class GreedyNet(nn.Module):
    """blocks[0..J-1], each with its auxiliary head; the net after stage j predicts with heads[j].

    `forward(x)` is the assembled model (all blocks, last head), as timm's `create_model` returns it.
    """

    def __init__(self, widths: list[int], num_classes: int, *, in_chans: int = 3, k: int = 2,
                 downsample: list[int] = (), downsample_mode: str = "space_to_depth", batchnorm: bool = True,
                 aux_width: int | None = None, pool_size: int = 2, input_downsample: bool = False,
                 final_head: str = "auxiliary"):
        super().__init__()
        self.num_classes = num_classes
        self.stem = SpaceToDepth(2) if input_downsample else nn.Identity()
        chans = in_chans * 4 if input_downsample else in_chans
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        for j, width in enumerate(widths):
            mode = downsample_mode if (j + 1) in downsample else None
            self.blocks.append(ConvBlock(chans, width, downsample=mode, batchnorm=batchnorm))
            if final_head == "vgg" and j == len(widths) - 1:
                self.heads.append(VGGClassifier(width, num_classes))
            else:
                self.heads.append(AuxiliaryHead(width, num_classes, k=k, width=aux_width,
                                                pool_size=pool_size, batchnorm=batchnorm))
            chans = width

    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    def prefix(self, j: int) -> nn.Sequential:
        """The input stem and blocks 0..j-1: what stage j sees as its (frozen) input transform."""
        return nn.Sequential(self.stem, *self.blocks[:j])

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block."""
        feats = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every head, each on its own block's output."""
        return [head(f) for head, f in zip(self.heads, self.forward_features(x), strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[-1](self.forward_features(x)[-1])


def create_greedy_net(cfg: Config, *, num_classes: int, in_chans: int) -> GreedyNet:
    return GreedyNet(
        cfg.widths, num_classes, in_chans=in_chans, k=cfg.k, downsample=cfg.downsample,
        downsample_mode=cfg.downsample_mode, batchnorm=cfg.batchnorm, aux_width=cfg.aux_width,
        pool_size=cfg.pool_size, input_downsample=cfg.input_downsample, final_head=cfg.final_head,
    )


def check_shapes(net: GreedyNet, in_chans: int, img_size: int) -> list[tuple[int, ...]]:
    """Each block's output shape (C, H, W) for a `in_chans x img_size x img_size` input, from a pass on the meta
    device (no memory, no data); the heads are run on their block's output too.

    Raises UsageError naming the first block (1-based) or head that cannot take its input, e.g. a 3x3 image before a
    space-to-depth (which needs even sizes) or a 1x1 map before a 2x2 max-pool.
    """
    shapes = []
    x = torch.zeros(2, in_chans, img_size, img_size, device="meta")  # 2: BatchNorm in train mode needs > 1 value
    parts = [("the input stem", net.stem)] + [(f"block {j + 1}", b) for j, b in enumerate(net.blocks)]
    with torch.no_grad():
        for j, (name, module) in enumerate(parts):
            shape = "x".join(map(str, x.shape[1:]))
            try:
                x = module.to("meta")(x)
            except (RuntimeError, ValueError):
                x = None
            if x is None or min(x.shape[2:]) < 1:
                raise UsageError(f"{name} cannot take its {shape} input (image size {img_size}); pass a larger "
                                 "--img-size or fewer 'downsample' blocks")
            if j > 0:
                shapes.append(tuple(x.shape[1:]))
                try:
                    net.heads[j - 1].to("meta")(x)
                except (RuntimeError, ValueError):
                    raise UsageError(f"the auxiliary head of {name} cannot take its {'x'.join(map(str, x.shape[1:]))} "
                                     f"input (image size {img_size}); pass a larger --img-size") from None
    return shapes


def stage_param_count(net: GreedyNet, j: int) -> dict[str, int]:
    """Parameters of block j, of head j, and of the model assembled after stage j (blocks 0..j + head j)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    blocks = sum(count(b) for b in net.blocks[: j + 1])
    return {"block": count(net.blocks[j]), "head": count(net.heads[j]), "model": blocks + count(net.heads[j])}


def _from_preset(preset: str, pretrained: bool = False, **kwargs) -> GreedyNet:
    """Build a shipped config's net; keyword arguments override config keys (num_classes, in_chans too)."""
    from greedy.data import dataset_info

    if pretrained:
        raise ValueError("greedy models have no pretrained weights; train one with train.py")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory options
        kwargs.pop(key, None)
    values = load_yaml(CONFIG_DIR / f"{preset}.yaml")
    num_classes, in_chans = kwargs.pop("num_classes", None), kwargs.pop("in_chans", None)
    values.update(kwargs)
    cfg = build_config(values, check_data=False)
    info = dataset_info(cfg.dataset)
    return create_greedy_net(cfg, num_classes=num_classes or cfg.num_classes or info.num_classes,
                             in_chans=in_chans or info.in_chans)


@register_model
def greedy_digits_k2(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("digits_k2", pretrained, **kwargs)


@register_model
def greedy_fashion_mnist_k2(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("fashion_mnist_k2", pretrained, **kwargs)


@register_model
def greedy_cifar10_k1(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("cifar10_k1", pretrained, **kwargs)


@register_model
def greedy_cifar10_k2(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("cifar10_k2", pretrained, **kwargs)


@register_model
def greedy_cifar10_k3(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("cifar10_k3", pretrained, **kwargs)


@register_model
def greedy_imagenet_k1(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("imagenet_k1", pretrained, **kwargs)


@register_model
def greedy_imagenet_k2(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("imagenet_k2", pretrained, **kwargs)


@register_model
def greedy_imagenet_k3(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("imagenet_k3", pretrained, **kwargs)


@register_model
def greedy_vgg11_k3(pretrained: bool = False, **kwargs) -> GreedyNet:
    return _from_preset("vgg11_k3", pretrained, **kwargs)
