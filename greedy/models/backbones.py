"""Any timm CNN as an ordered chain of units, proven equal to the model's `forward_features`.

A greedy run cuts a backbone into K local modules; this module finds where it may be cut. `timm_units(name)`
creates the timm model and returns its units, `[(name, module), ...]`, and a `TimmHead`, the model's own
`forward_head` (which keeps the model reachable as `head.model`):

    units, head = timm_units("resnet18", input_size=(3, 64, 64))
    x (N, 3, 64, 64) -> units[0] -> ... -> units[-1] -> (N, 512, 2, 2) -> head -> (N, num_classes)
    chain(x) == model.forward_features(x) and head(chain(x)) == model(x), bit for bit (verify_chain)

How the units are found, with no per-family code:
1. Trace. Forward pre-hooks on the model's children (an nn.ModuleList or nn.ModuleDict is seen through to its
   children, as it has no forward of its own) record which children run in `forward_features`, in call order;
   the children that run in `forward_head` (pooling, pre-logits, classifier) make the head. Tracing, not names,
   because families differ: EfficientNet runs `conv_head` in forward_features, MobileNetV3 in forward_head; VGG's
   ConvMlp `pre_logits` runs in forward_head. Steps 1-2 run on a perturbed copy of the model (see verify_chain).
2. Expand. An nn.Sequential whose forward is not overridden becomes its children, recursively. A custom module
   with an nn.Sequential or nn.ModuleList child (a stage, such as timm's ConvNeXtStage) becomes the children its
   forward calls, if running them in that order gives exactly its output. Any other module stays whole: a
   residual block (BasicBlock, Bottleneck, InvertedResidual, ConvNeXtBlock), a conv-norm-act, an SE layer.
3. Group. A unit starts at a module that has parameters and is not a normalization layer; parameter-free modules
   (activation, pooling, dropout, Identity) and normalization layers join the unit before them, so a cut never
   falls between a conv and its norm or activation. Two exceptions: a pre-norm (a normalization layer that opens
   a container and is followed by a module with parameters, as in ConvNeXt's downsample LayerNorm -> conv) opens
   the unit of what follows it, and parameter-free modules at the very start join the first unit. A unit is named
   after the container it is exactly (ConvNeXt's `stages.1.downsample`), else after the container it begins with
   (ConvNeXt's `stem`: stem.0, stem.1, stages.0.downsample), else after its first module (ResNet's `conv1`:
   conv1, bn1, act1, maxpool); a unit of several modules that is not one container is a `Chain` of them.
4. Prove. `verify_chain` runs the chain and `forward_features` (and the head and the whole model) on the same
   seeded random input, in eval and in training mode, on a copy with perturbed weights, and demands `torch.equal`;
   a model that fails is refused with a UsageError (a ViT, whose forward_features adds position embeddings between
   its children, is one). So is a model with parameters in neither the units nor the head.

Units of common families (see tests/test_backbones.py): resnet: conv1, layer1.0, layer1.1, ..., layer4.<last>;
vgg: features.0, features.3, ... (each conv with its ReLU and max pooling); convnext: stem, stages.0.blocks.0, ...,
stages.1.downsample, stages.1.blocks.0, ...; efficientnet: conv_stem (+bn1), blocks.0.0, ..., conv_head (+bn2).

Limits. A stage that is a custom module without a Sequential/ModuleList
child stays one unit (RegNet's s1..s4, DLA's levels, CSPNet's stages). Building copies the model once for the
search and once for the proof (VGG's default 100M-parameter ConvMlp head: a few seconds and that much memory).

Sources: timm's model interface (timm/models/resnet.py, vgg.py, convnext.py, efficientnet.py, mobilenetv3.py:
`forward_features`, `forward_head`, `get_classifier`); torch.utils.flop_counter for FLOPs.
"""

from __future__ import annotations

import copy
import difflib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from greedy.errors import UsageError

Unit = tuple[str, nn.Module]

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
"""Join the unit before them; timm's BatchNormAct2d, LayerNorm2d and GroupNormAct subclass these."""

WHAT_WORKS = ("what works: timm CNNs whose forward_features runs their children one after another "
              "(e.g. resnet, vgg, convnext, efficientnet)")


class Chain(nn.Sequential):
    """Several consecutive modules of a model as one unit; `member_names` are their names in the model."""

    def __init__(self, members: list[Unit]):
        super().__init__(*(m for _, m in members))
        self.member_names = [n for n, _ in members]


class TimmHead(nn.Module):
    """The timm model's own `forward_head`: (N, C, H, W) features -> (N, num_classes) logits.

    It owns (as submodules, under their names in the model) only the modules forward_head runs, so its
    parameters are the head's; `model` is the whole timm model, kept as a plain reference (not a submodule).
    """

    def __init__(self, model: nn.Module, parts: list[Unit]):
        super().__init__()
        self.part_names = [name for name, _ in parts]
        for name, module in parts:
            self.add_module(name.replace(".", "_"), module)
        object.__setattr__(self, "_model", model)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """The model's own reset_classifier (a new classifier, and pooling if given), its new modules owned."""
        if global_pool is None:
            self._model.reset_classifier(num_classes)
        else:
            self._model.reset_classifier(num_classes, global_pool)
        for name in self.part_names:
            self.add_module(name.replace(".", "_"), self._model.get_submodule(name))

    @property
    def model(self) -> nn.Module:
        return self._model

    def train(self, mode: bool = True) -> TimmHead:
        super().train(mode)
        self._model.training = mode  # forward_head reads the model's flag (functional dropout)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.forward_head(x)


def timm_units(name: str, *, pretrained: bool = False, num_classes: int | None = None, in_chans: int = 3,
               input_size: tuple[int, int, int] | None = None, **kwargs) -> tuple[list[Unit], TimmHead]:
    """Create timm model `name` and cut it into units; see the module docstring.

    `pretrained` and `kwargs` go to `timm.create_model` as they are; `num_classes=None` keeps timm's default
    (the pretrained classifier). `input_size` (C, H, W) is what the proof runs on (default: the model's
    pretrained_cfg input size); a small one keeps it cheap. Raises a one-line UsageError for an unknown name,
    weights that cannot be fetched, or a model that is not a chain.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UsageError(f"unknown timm model {name!r}{hint}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        with _hub_or_cache(name) if pretrained else nullcontext():
            model = timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    except OSError as err:  # huggingface_hub's and requests' errors are OSErrors
        if not pretrained:
            raise
        raise UsageError(f"cannot fetch pretrained weights for timm model {name!r} ({type(err).__name__}); "
                         "this machine may be offline: put them in the Hugging Face cache (HF_HOME) on a machine "
                         "with internet, or use pretrained=False") from err
    except RuntimeError as err:  # timm: "No pretrained weights exist for ..." and the like
        if not (pretrained and "pretrained" in str(err)):
            raise
        raise UsageError(f"timm model {name!r}: {_one_line(err)}") from err
    except TypeError as err:
        raise UsageError(f"timm model {name!r} does not take these arguments: {_one_line(err)}") from err
    if input_size is None:
        input_size = (in_chans, *model.pretrained_cfg["input_size"][1:])
    return model_units(model, input_size, name=name)


_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@contextmanager
def _hub_or_cache(name: str) -> Iterator[None]:
    """Where timm model `name`'s pretrained weights will come from, decided in at most a few seconds. If the
    Hugging Face hub's host cannot even be connected to (an offline machine), weights in the local cache are
    loaded in offline mode, and weights not there are refused in one line at once: huggingface_hub would
    otherwise retry for about a minute before failing. Behind a proxy, or with HF_HUB_OFFLINE already set,
    huggingface_hub decides alone. Raises UsageError."""
    constants = huggingface_hub.constants
    repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if constants.HF_HUB_OFFLINE or not repo or any(os.environ.get(v) for v in _PROXIES):
        yield
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        cached = any(isinstance(huggingface_hub.try_to_load_from_cache(repo.split("@")[0], f,
                                                                       cache_dir=constants.HF_HUB_CACHE), str)
                     for f in _WEIGHT_FILES)
        if not cached:
            raise UsageError(f"cannot fetch pretrained weights for timm model {name!r}: {host} cannot be reached "
                             f"({_one_line(err)}) and they are not in the Hugging Face cache; put them there "
                             f"(HF_HOME) on a machine with internet, or use pretrained=False") from None
        constants.HF_HUB_OFFLINE = True  # load them from the cache without trying the network
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = False
        return
    yield


def model_units(model: nn.Module, input_size: tuple[int, int, int], *, name: str | None = None,
                ) -> tuple[list[Unit], TimmHead]:
    """Cut a timm-style model (forward_features, forward_head) into units and prove the chain; see module doc.

    The structure is found on a perturbed copy of the model (see verify_chain); the units are the model's own
    modules, found again by name.
    """
    name = name or type(model).__name__
    refuse = lambda why: UsageError(  # noqa: E731
        f"timm model {name!r} cannot be split into a chain of local modules: {why}; {WHAT_WORKS}")
    probe = _perturbed(model)[0]
    x = _random_input(probe, input_size)
    with _eval(probe), torch.no_grad():
        try:
            expected = probe.forward_features(x.clone())
            logits = probe.forward_head(expected.clone())
        except Exception as err:  # noqa: BLE001  (any failure of the model on this input is the user's to fix)
            raise UsageError(f"timm model {name!r} fails on input size {tuple(input_size)}: {_one_line(err)}") from err
        if not isinstance(expected, torch.Tensor) or not isinstance(logits, torch.Tensor):
            raise refuse("forward_features or forward_head does not return one tensor")
        nodes = _nodes(probe)
        feature_names = _trace(nodes, lambda: probe.forward_features(x.clone()))
        head_names = _trace(nodes, lambda: probe.forward_head(expected.clone()))
        if set(feature_names) & set(head_names):
            raise refuse("a module runs in both forward_features and forward_head")
        leaves = _chain(dict(nodes), feature_names, x, expected, containers := {})
        if not leaves:  # None, or a forward_features that runs none of its children
            raise refuse("its forward_features is not the composition of its children")
    own = model.get_submodule
    units = _group([(n, own(n)) for n, _ in leaves], {c: (own(c), ls) for c, (_, ls) in containers.items()})
    head = TimmHead(model, [(n, own(n)) for n, _ in nodes if n in head_names])
    owned = {id(p) for _, m in [*units, ("head", head)] for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in owned]
    if stray:
        raise refuse(f"parameters outside its chain and head ({', '.join(stray[:3])})")
    if not verify_chain(model, units, input_size, head=head):
        raise refuse("its chain differs from forward_features in the proof (perturbed weights, eval and training mode)")
    return units, head


def verify_chain(model: nn.Module, units: list[Unit], input_size: tuple[int, int, int], *,
                 head: nn.Module | None = None, seed: int = 0, batch: int = 2, perturb: bool = True) -> bool:
    """Whether the units run in order equal `model.forward_features` bit for bit (torch.equal) on a seeded
    random (batch, *input_size) input, in eval mode; with `head`, also whether head(chain(x)) == model(x).

    With `perturb` (the default) it checks a copy of the model, units and head whose parameters carry seeded
    noise, so that the proof holds for any weights: timm zero-initializes the last norm of each residual block,
    which makes a fresh block the identity on non-negative input, and a chain missing such a block would pass
    on the fresh weights. On that copy it checks training mode too (batch statistics, dropout and drop-path,
    each side run from the same RNG seed). Raises what the chain raises when it cannot run (wrong shapes).
    """
    if perturb:
        model, units, head = _perturbed(model, units, head, seed=seed)
    x = _random_input(model, input_size, seed=seed, batch=batch)
    modules = [model, *(m for _, m in units), *([head] if head is not None else [])]

    def seeded(run: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return run()

    def chain() -> torch.Tensor:
        y = x.clone()
        for _, unit in units:
            y = unit(y)
        return y

    same = lambda a, b: a.shape == b.shape and torch.equal(a, b)  # noqa: E731
    for train in ([False, True] if perturb else [False]):  # training mode changes norm statistics: copies only
        with _eval(*modules), torch.no_grad():
            for m in modules:
                m.train(train)
            if not same(seeded(chain), seeded(lambda: model.forward_features(x.clone()))):
                return False
            if head is not None and not same(seeded(lambda: head(chain())), seeded(lambda: model(x.clone()))):
                return False
    return True


def unit_rows(units: list[Unit], input_size: tuple[int, int, int]) -> list[dict]:
    """Per unit, for one image of `input_size` (C, H, W): name, modules (names in the model), output shape
    (C, H, W), parameter count and FLOPs (torch's FlopCounterMode: a multiply-add counts 2). Runs on fake
    tensors (shapes only, no arithmetic), so it is cheap even for a large model and input."""
    shapes, flops = _profile(units, input_size)
    return [{"name": n, "modules": getattr(m, "member_names", [n]), "out_shape": s,
             "params": sum(p.numel() for p in m.parameters()), "flops": f}
            for (n, m), s, f in zip(units, shapes, flops, strict=True)]


def unit_flops(units: list[Unit], input_size: tuple[int, int, int]) -> list[int]:
    """FLOPs of each unit for one image of `input_size` (C, H, W); see unit_rows."""
    return _profile(units, input_size)[1]


def unit_table(units: list[Unit], input_size: tuple[int, int, int]) -> str:
    """unit_rows as a printable table, one line per unit."""
    rows = unit_rows(units, input_size)
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'#':>3}  {'unit':<{width}}  {'out (C, H, W)':<16} {'params':>11} {'MFLOPs':>10}  modules"]
    for i, r in enumerate(rows):
        shape = "x".join(map(str, r["out_shape"]))
        mods = ", ".join(r["modules"]) if len(r["modules"]) > 1 else ""
        lines.append(f"{i:>3}  {r['name']:<{width}}  {shape:<16} {r['params']:>11,} {r['flops'] / 1e6:>10.1f}  {mods}")
    lines.append(f"{'':>3}  {'total':<{width}}  {'':<16} {sum(r['params'] for r in rows):>11,} "
                 f"{sum(r['flops'] for r in rows) / 1e6:>10.1f}")
    return "\n".join(lines)


# --- how units are found -------------------------------------------------------------------------------------


def _nodes(module: nn.Module, prefix: str = "") -> list[Unit]:
    """module's children, an nn.ModuleList or nn.ModuleDict seen through to its children (it has no forward)."""
    out = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            out += _nodes(child, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", child))
    return out


def _trace(nodes: list[Unit], run: Callable[[], object]) -> list[str]:
    """Names of the nodes called while run() runs, in call order, leaving out calls made from within a node."""
    calls, depth, handles = [], [0], []

    def pre_hook(name: str):
        def hook(module, args):
            if depth[0] == 0:
                calls.append(name)
            depth[0] += 1
        return hook

    def post_hook(module, args, out):
        depth[0] -= 1

    try:
        for name, module in nodes:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook))
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def _chain(nodes: dict[str, nn.Module], order: list[str], x: torch.Tensor, expected: torch.Tensor,
           containers: dict[str, tuple[nn.Module, list[str]]]) -> list[Unit] | None:
    """The leaves of nodes run in `order` on x if that reproduces `expected` exactly, else None."""
    if len(set(order)) != len(order):  # a module run twice is shared, not a link of a chain
        return None
    leaves, y = [], x.clone()
    try:
        for name in order:
            sub, y = _expand(name, nodes[name], y, containers)
            leaves += sub
    except Exception:  # noqa: BLE001  (running the children alone fails: not a chain)
        return None
    return leaves if y.shape == expected.shape and torch.equal(y, expected) else None


def _expand(name: str, module: nn.Module, x: torch.Tensor,
            containers: dict[str, tuple[nn.Module, list[str]]]) -> tuple[list[Unit], torch.Tensor]:
    """module's leaves in order and its output on x; records each expanded container with its leaves' names."""
    children = list(module.named_children())
    plain_sequential = isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
    if plain_sequential and children:
        containers[name] = (module, [])
        leaves = []
        for child_name, child in children:
            sub, x = _expand(f"{name}.{child_name}", child, x, containers)
            leaves += sub
        containers[name] = (module, [n for n, _ in leaves])
        return leaves, x
    if any(isinstance(c, (nn.Sequential, nn.ModuleList)) for _, c in children):  # a stage: try its children
        nodes = [(f"{name}.{n}", m) for n, m in _nodes(module)]
        order = _trace(nodes, lambda: module(x.clone()))
        expected = module(x.clone())
        inner: dict[str, tuple[nn.Module, list[str]]] = {}
        owned = {id(p) for n, m in nodes if n in order for p in m.parameters()}
        if all(id(p) in owned for p in module.parameters()):
            leaves = _chain(dict(nodes), order, x, expected, inner)
            if leaves is not None:
                containers[name] = (module, [n for n, _ in leaves])
                containers.update(inner)
                return leaves, expected
    return [(name, module)], module(x)


def _starts_unit(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) and not isinstance(module, NORM_LAYERS)


def _group(leaves: list[Unit], containers: dict[str, tuple[nn.Module, list[str]]]) -> list[Unit]:
    """Leaves grouped into units (see the module doc), each named and built as one module."""
    firsts = {ls[0] for _, ls in containers.values() if ls}
    groups: list[list[Unit]] = []
    after_prenorm = False
    for i, (name, module) in enumerate(leaves):
        prenorm = (isinstance(module, NORM_LAYERS) and name in firsts and i + 1 < len(leaves)
                   and _starts_unit(leaves[i + 1][1]))
        if not groups or prenorm or (_starts_unit(module) and not after_prenorm):
            groups.append([(name, module)])
        else:
            groups[-1].append((name, module))
        after_prenorm = prenorm
    if len(groups) > 1 and not any(_starts_unit(m) for _, m in groups[0]):
        groups[:2] = [groups[0] + groups[1]]
    units = []
    for group in groups:
        names = [n for n, _ in group]
        whole = [(c, m) for c, (m, ls) in containers.items() if ls == names]  # outermost first
        leading = [c for c, (_, ls) in containers.items() if ls and ls == names[: len(ls)]]
        if len(group) == 1:
            units.append(group[0])
        elif whole:
            units.append(whole[0])
        else:
            units.append((leading[0] if leading else names[0], Chain(group)))
    return units


# --- helpers -------------------------------------------------------------------------------------------------


def _random_input(model: nn.Module, input_size: tuple[int, int, int], *, seed: int = 0,
                  batch: int = 2) -> torch.Tensor:
    """A seeded standard normal (batch, *input_size) tensor on the model's device, in its dtype."""
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size, generator=gen).to(device=device, dtype=dtype)


def _perturbed(*objects, seed: int = 0) -> tuple:
    """A deep copy of the objects (a model and its units or head share modules, and so do their copies) whose
    floating-point parameters carry seeded noise of a tenth of their mean magnitude (0.1 where that is 0) and
    whose floating-point buffers (norm statistics) are scaled by a factor in [1, 1.1); the copy's numbers stay in
    range, and no layer is an identity by initialization any more."""
    copies = copy.deepcopy(objects)
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for module in (m for obj in copies if isinstance(obj, nn.Module) for m in obj.modules()):
            for tensor, is_param in [*((p, True) for p in module._parameters.values()),
                                     *((b, False) for b in module._buffers.values())]:
                if tensor is None or id(tensor) in seen or not tensor.is_floating_point():
                    continue
                seen.add(id(tensor))
                if is_param:
                    scale = float(tensor.abs().mean()) or 0.1
                    tensor.add_(0.1 * scale * torch.randn(tensor.shape, generator=gen).to(tensor))
                else:
                    tensor.mul_(1 + 0.1 * torch.rand(tensor.shape, generator=gen).to(tensor))
    return copies


@contextmanager
def _eval(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for the modules inside the block; each submodule's own training flag restored after."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _profile(units: list[Unit], input_size: tuple[int, int, int]) -> tuple[list[tuple[int, ...]], list[int]]:
    """Output shape (without batch) and FLOPs of each unit for one image, on fake tensors (no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes, flops = [], []
    modules = [m for _, m in units]
    with _eval(*modules), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        param = next((p for m in modules for p in m.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        y = torch.empty(1, *input_size, dtype=dtype, device=param.device if param is not None else "cpu")
        for unit in modules:
            with FlopCounterMode(display=False) as counter:
                y = unit(y)
            shapes.append(tuple(y.shape[1:]))
            flops.append(counter.get_total_flops())
    return shapes, flops


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
