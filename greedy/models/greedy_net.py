"""GreedyNet: the local modules (blocks) and the auxiliary nets (heads) of a layerwise-trained CNN.

A net is an ordered chain of units (a plain net's conv blocks; a ResNet's stem and residual blocks; any timm CNN's
layers). `tracing.split_units` cuts the chain into K consecutive local modules, each trained by one auxiliary
problem; `GreedyNet.from_units` is the one way to assemble a net from such a chain, `create_greedy_net` the one
way from a config.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import torch
from timm.models._features import feature_take_indices
from torch import nn

from greedy.datasets import dataset_info
from greedy.errors import UsageError
from greedy.models.backbones import TimmHead, timm_units
from greedy.models.blocks import SpaceToDepth, plain_units, resnet_units
from greedy.models.heads import create_head
from greedy.models.tracing import TooSmall, Units, UnitShape, meta_call, shape_str, split_units, trace_units
from greedy.schema import Config

# A chain of units, built already (a list) or on demand (a function returning a fresh iterator of them).
UnitSource = Units | Callable[[], Iterable[tuple[str, nn.Module]]]


class GreedyNet(nn.Module):
    """blocks[0..J-1] (the local modules), each with its auxiliary net heads[j]; the net after stage j predicts
    with heads[j]. `stem` is a parameter-free input transform (identity or space-to-depth) before blocks[0].

    `forward(x)` is the assembled model (all blocks, last head), as timm's `create_model` returns it.
    `module_units[j]` names the units of local module j. A module of one unit is that unit itself (a plain net's
    `blocks.0.conv.weight`); a module of several is a Sequential keyed by unit name, dots made underscores
    (`blocks.0.stage1_block1.conv1.0.weight`; a timm unit 'layer1.0' is `blocks.0.layer1_0...`).

    The constructor builds a plain net (Belilovsky et al. 2019) from its widths; `from_units` builds any chain.
    """

    def __init__(self, widths: list[int], num_classes: int, *, in_chans: int = 3, k: int = 2,
                 downsample: list[int] = (), downsample_mode: str = "space_to_depth", batchnorm: bool = True,
                 aux_width: int | None = None, pool_size: int = 2, input_downsample: bool = False,
                 final_head: str = "auxiliary", aux: str = "cnn", num_modules: int | None = None,
                 split_points: list[int] | None = None, img_size: int = 32, split_by: str = "flops"):
        super().__init__()
        stem = SpaceToDepth(2) if input_downsample else None
        chans = in_chans * 4 if input_downsample else in_chans
        units = lambda: plain_units(chans, widths, downsample=downsample,  # noqa: E731
                                    downsample_mode=downsample_mode, batchnorm=batchnorm)
        self._assemble(units, num_classes, in_chans=in_chans, img_size=img_size, stem=stem,
                       num_modules=num_modules, split_points=split_points, split_by=split_by, aux=aux,
                       final_head=final_head,
                       head_options={"k": k, "width": aux_width, "pool_size": pool_size, "batchnorm": batchnorm})

    @classmethod
    def from_units(cls, units: UnitSource, num_classes: int, *, in_chans: int, img_size: int,
                   stem: nn.Module | None = None, num_modules: int | None = None, split_points: list[int] | None = None,
                   aux: str = "cnn", final_head: str | nn.Module = "auxiliary", head_options: dict | None = None,
                   split_by: str = "flops") -> GreedyNet:
        """A GreedyNet from an ordered chain of (name, unit) pairs, e.g. a ResNet's stem and residual blocks or a
        timm CNN's layers: split into local modules by `split_units`, an `aux` auxiliary net on each module but
        the last, whose head is `final_head` ('auxiliary': another `aux`; a module: that head itself, e.g. a timm
        model's own classifier, backbones.TimmHead). `stem`: parameter-free input transform.
        Input N x in_chans x img_size x img_size; `head_options`: k, width, pool_size, batchnorm.

        `units` is a list of built units (e.g. a timm CNN's layers) or a function returning a fresh iterator that
        builds them one at a time: then the chain is first built on the meta device (free, draws no random
        numbers) to split it, and each head is built right after its module's last unit, so that a seeded plain
        net draws its weights in the order it always has (block 1, head 1, block 2, ...)."""
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._assemble(units, num_classes, in_chans=in_chans, img_size=img_size, stem=stem, num_modules=num_modules,
                      split_points=split_points, split_by=split_by, aux=aux, final_head=final_head,
                      head_options=head_options or {})
        return net

    def _assemble(self, units: UnitSource, num_classes: int, *, in_chans: int, img_size: int, stem: nn.Module | None,
                  num_modules: int | None, split_points: list[int] | None, split_by: str, aux: str,
                  final_head: str | nn.Module, head_options: dict) -> None:
        self.num_classes = num_classes
        self.input_shape = (in_chans, img_size, img_size)  # C x H x W the modules and heads were traced for
        self.stem = stem if stem is not None else nn.Identity()
        make = units if callable(units) else lambda: iter(units)
        with torch.device("meta"):
            plan = list(make())
        try:
            traces = trace_units(plan, (in_chans, img_size, img_size), stem)
        except TooSmall as err:
            if err.unit < 0 or (num_modules is not None and not split_points):
                raise  # the stem, or a FLOPs split (it needs every unit's FLOPs): the unit is all there is to name
            j = 1 + sum(p <= err.unit for p in split_points) if split_points else err.unit + 1
            raise TooSmall(err.size, err.unit, err.name, err.problem, j) from None
        costs = [t.activation_bytes if split_by == "memory" else t.flops for t in traces]
        groups = split_units(costs, num_modules, split_points)
        self.module_units = [[plan[i][0] for i in group] for group in groups]
        module_of_last = {group[-1]: j for j, group in enumerate(groups)}
        built, self.heads = [], nn.ModuleList()
        for i, unit in enumerate(make()):
            built.append(unit)
            if i in module_of_last:
                j = module_of_last[i]
                if j == len(groups) - 1 and isinstance(final_head, nn.Module):
                    self.heads.append(final_head)
                    continue
                kind = final_head if j == len(groups) - 1 and final_head != "auxiliary" else aux
                self.heads.append(create_head(kind, traces[i].out_shape[0], num_classes, **head_options))
        self.num_features = traces[groups[-1][-1]].out_shape[0]
        self.feature_info = [{"num_chs": traces[g[-1]].out_shape[0], "module": f"blocks.{j}",
                              "reduction": img_size // traces[g[-1]].out_shape[-1]} for j, g in enumerate(groups)]
        self.blocks = nn.ModuleList(
            built[group[0]][1] if len(group) == 1
            else nn.Sequential(OrderedDict((built[i][0].replace(".", "_"), built[i][1]) for i in group))
            for group in groups
        )

    @property
    def num_stages(self) -> int:
        return len(self.blocks)

    def units(self, j: int | None = None) -> list[nn.Module]:
        """The units of local module j (None: of every module), in the chain's order."""
        modules = range(self.num_stages) if j is None else [j]
        return [unit for i in modules
                for unit in (list(self.blocks[i]) if len(self.module_units[i]) > 1 else [self.blocks[i]])]

    def unit_shapes(self, in_chans: int, img_size: int) -> list[UnitShape]:
        """Every unit of the net in order with its input and output shapes (C, H, W), from a meta-device pass (no
        memory, no random numbers): what objectives that build on later units (AugLocal) need."""
        x = meta_call(self.stem, torch.zeros(2, in_chans, img_size, img_size, device="meta"))
        names = [name for names in self.module_units for name in names]
        shapes = []
        for name, unit in zip(names, self.units(), strict=True):
            y = meta_call(unit, x)
            shapes.append(UnitShape(name, unit, tuple(x.shape[1:]), tuple(y.shape[1:])))
            x = y
        return shapes

    def prefix(self, j: int) -> nn.Sequential:
        """The input stem and blocks 0..j-1: what stage j sees as its (frozen) input transform."""
        return nn.Sequential(self.stem, *self.blocks[:j])

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every local module (block), (N, C_j, H_j, W_j) each: what the heads see."""
        return self.forward_intermediates(x, intermediates_only=True)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every head, each on its own block's output."""
        return [head(f) for head, f in zip(self.heads, self.forward_blocks(x), strict=True)]

    # --- timm's model interface (timm/models/resnet.py: forward_features, forward_head, forward_intermediates,
    # get_classifier, reset_classifier, num_features, feature_info) -----------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> the last local module's output (N, num_features, H', W'), as timm's."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last head on forward_features' output: (N, num_classes) logits, or with `pre_logits` the
        (N, F) features its classifier (get_classifier) takes."""
        head = self.heads[-1]
        if not pre_logits:
            return head(x)
        if isinstance(head, TimmHead):
            return head.model.forward_head(x, pre_logits=True)
        taken: list[torch.Tensor] = []
        hook = _classifier(head)[1].register_forward_pre_hook(lambda _, args: taken.append(args[0]))
        try:
            head(x)
        finally:
            hook.remove()
        return taken[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's forward_intermediates over the local modules: the outputs (N, C_j, H_j, W_j) of the modules
        `indices` selects (None: all; an int n: the last n; a list: those, negative from the end), and unless
        `intermediates_only` the final features too (with `stop_early`, the output of the last module taken).
        `norm` is accepted for the interface; these nets have no final norm. Only output_fmt NCHW."""
        if output_fmt != "NCHW":
            raise UsageError(f"output_fmt {output_fmt!r}: greedy nets give NCHW feature maps only")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        intermediates = []
        x = self.stem(x)
        blocks = self.blocks[: max_index + 1] if stop_early or intermediates_only else self.blocks
        for j, block in enumerate(blocks):
            x = block(x)
            if j in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def get_classifier(self) -> nn.Module:
        """The last head's classifier: its final nn.Linear (for final_head timm, the timm model's)."""
        head = self.heads[-1]
        return head.model.get_classifier() if isinstance(head, TimmHead) else _classifier(head)[1]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialized classifier with `num_classes` outputs on every head, the rest of each
        head (and every block) unchanged.

        Every head, not only the last: the auxiliary nets predict the same classes as the final head (the
        per-stage accuracies, the paper's ensemble of heads and a later greedy stage all need that), and every
        head's final Linear is listed in pretrained_cfg['classifier'], so that timm's loading with a different
        num_classes drops all of them too. `global_pool` (timm's pooling name) applies to a final_head timm
        only; the auxiliary nets' pooling is fixed by the config (aux, pool_size)."""
        for head in self.heads:
            if isinstance(head, TimmHead):
                head.reset_classifier(num_classes, global_pool)
            else:
                if global_pool is not None and head is self.heads[-1]:
                    raise UsageError(f"reset_classifier: global_pool {global_pool!r} applies to final_head timm; "
                                     f"the last head here is {type(head).__name__}, whose pooling the config sets")
                name, old = _classifier(head)
                new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                                device=old.weight.device, dtype=old.weight.dtype)
                head.set_submodule(name, new)
        self.num_classes = num_classes

    def classifier_names(self) -> tuple[str, ...]:
        """The state-dict prefixes of every head's final Linear (`heads.0.fc`, ...): pretrained_cfg's
        'classifier', the layers timm drops when it loads weights for a different num_classes."""
        names = []
        for j, head in enumerate(self.heads):
            inner = _classifier(head)[0] if not isinstance(head, TimmHead) else next(
                n for n, m in head.named_modules() if m is head.model.get_classifier())
            names.append(f"heads.{j}.{inner}")
        return tuple(names)

    def module_shapes(self, in_chans: int, img_size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(input shape, output shape) of every local module, (C, H, W) each, from a meta-device pass; every
        head is run on its module's output too. Raises UsageError naming the module an input is too small for."""
        x = meta_call(self.stem, torch.zeros(2, in_chans, img_size, img_size, device="meta"))
        shapes = []
        for j, (block, head) in enumerate(zip(self.blocks, self.heads, strict=True)):
            what = f"local module {j + 1} ({', '.join(self.module_units[j])})"
            try:
                y = meta_call(block, x)
                if y.numel() == 0:
                    raise RuntimeError(f"empty output {shape_str(y)}")
                meta_call(head, y)
            except RuntimeError as err:
                raise UsageError(f"input {in_chans}x{img_size}x{img_size} does not fit {what} or its auxiliary "
                                 f"net ({str(err).splitlines()[0]}); use larger images or fewer downsampling layers"
                                 ) from None
            shapes.append((tuple(x.shape[1:]), tuple(y.shape[1:])))
            x = y
        return shapes


def timm_backbone(cfg: Config, *, num_classes: int, in_chans: int, img_size: int) -> tuple[Units, TimmHead]:
    """arch timm: timm model `cfg.model` (with `cfg.pretrained` weights) for N x in_chans x img_size x img_size
    inputs, cut into its proven chain of units and its own head (backbones.timm_units). Built on the CPU with real
    weights even under `with torch.device("meta")`: the chain is proven by running it."""
    with torch.device("cpu"):
        return timm_units(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, in_chans=in_chans,
                          input_size=(in_chans, img_size, img_size))


def _classifier(head: nn.Module) -> tuple[str, nn.Linear]:
    """(name in `head`, module) of a head's classifier: its last nn.Linear."""
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"head {type(head).__name__} has no nn.Linear classifier")
    return linears[-1]


def net_units(cfg: Config, in_chans: int) -> Iterator[tuple[str, nn.Module]]:
    """The ordered units `cfg.arch` describes (plain, resnet), built as they are reached (`in_chans`: after the
    stem). arch timm builds a whole model at once: see timm_backbone."""
    if cfg.arch == "resnet":
        return resnet_units(in_chans, cfg.widths, cfg.depths, block=cfg.block, shortcut_kind=cfg.shortcut,
                            stem_width=cfg.stem_width)
    return plain_units(in_chans, cfg.widths, downsample=cfg.downsample, downsample_mode=cfg.downsample_mode,
                       batchnorm=cfg.batchnorm)


def create_greedy_net(cfg: Config, *, num_classes: int, in_chans: int, img_size: int | None = None) -> GreedyNet:
    """The config's net for N x in_chans x img_size x img_size inputs (img_size None: cfg's, else the dataset's)."""
    if img_size is None:
        img_size = cfg.img_size or dataset_info(cfg.dataset).img_size
    stem = SpaceToDepth(2) if cfg.input_downsample else None
    chans = in_chans * 4 if cfg.input_downsample else in_chans
    units, final_head = (lambda: net_units(cfg, chans)), cfg.final_head
    if cfg.arch == "timm":
        size = img_size // 2 if cfg.input_downsample else img_size
        units, timm_head = timm_backbone(cfg, num_classes=num_classes, in_chans=chans, img_size=size)
        final_head = timm_head if cfg.final_head == "timm" else final_head
    return GreedyNet.from_units(
        units, num_classes, in_chans=in_chans, img_size=img_size, stem=stem,
        num_modules=cfg.num_modules, split_points=cfg.split_points, split_by=cfg.split_by, aux=cfg.aux,
        final_head=final_head,
        head_options={"k": cfg.k, "width": cfg.aux_width, "pool_size": cfg.pool_size, "batchnorm": cfg.batchnorm},
    )


def check_shapes(cfg: Config, in_chans: int, img_size: int, num_classes: int = 10) -> GreedyNet:
    """The config's net on the meta device (no memory; a timm backbone is built for real to prove its chain), after
    running every local module and auxiliary net on an N x in_chans x img_size x img_size input: refuses, before
    training, inputs too small for it (UsageError naming the unit or module that fails)."""
    with torch.device("meta"):
        net = create_greedy_net(cfg, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    net.module_shapes(in_chans, img_size)
    return net


def stage_param_count(net: GreedyNet, j: int) -> dict[str, int]:
    """Parameters of block j, of head j, and of the model assembled after stage j (blocks 0..j + head j)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    blocks = sum(count(b) for b in net.blocks[: j + 1])
    return {"block": count(net.blocks[j]), "head": count(net.heads[j]), "model": blocks + count(net.heads[j])}
