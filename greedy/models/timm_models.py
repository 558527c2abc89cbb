"""The greedy models registered with timm: every shipped config (`timm.create_model('greedy_cifar10_k3')`) and any
trained run (`timm.create_model('greedy_run', run_dir=..., pretrained=True)`), built through timm's own
`build_model_with_cfg` (pretrained_cfg, features_only, classifier reset)."""

from __future__ import annotations

from pathlib import Path

from timm.models import build_model_with_cfg, register_model
from torch import nn

from greedy.checkpoint import RunDir
from greedy.config import build_config, coerce, load_yaml
from greedy.datasets import dataset_classes, dataset_info, dataset_stats
from greedy.errors import UsageError
from greedy.models.greedy_net import GreedyNet, create_greedy_net
from greedy.schema import FIELDS, Config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

TIMM_OPTIONS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "out_indices",
                "feature_cls")
"""timm.create_model's options a greedy model takes, handled by timm.models.build_model_with_cfg."""


def greedy_pretrained_cfg(cfg: Config, net: GreedyNet) -> dict:
    """timm's pretrained_cfg for the config's net: what its weights expect. input_size (C, H, W) and num_classes
    are the config's dataset's (img_size if set), mean/std the normalization a run of it uses
    (data.dataset_stats, or norm_mean / norm_std), first_conv the net's first conv, classifier every head's final Linear
    (GreedyNet.classifier_names). In-memory datasets are resized bilinearly and never cropped."""
    info = dataset_info(cfg.dataset)
    img_size = cfg.img_size or info.img_size
    mean, std = (cfg.norm_mean, cfg.norm_std) if cfg.norm_mean else dataset_stats(cfg.dataset, cfg.data_dir,
                                                                                   cfg.img_size)
    first_conv = next((f"blocks.{n}" for n, m in net.blocks.named_modules() if isinstance(m, nn.Conv2d)), None)
    pretrained_cfg = {"input_size": (info.in_chans, img_size, img_size), "mean": tuple(mean), "std": tuple(std),
                      "num_classes": cfg.num_classes or dataset_classes(cfg.dataset, cfg.data_dir),
                      "first_conv": first_conv,
                      "classifier": net.classifier_names()}
    if cfg.dataset != "imagenet":
        pretrained_cfg.update(interpolation="bilinear", crop_pct=1.0)
    return pretrained_cfg


def _build(variant: str, values: dict, pretrained: bool, kwargs: dict, *, weights: Path | None = None,
           fixed: bool = False) -> nn.Module:
    """A registered greedy model, built through timm's `build_model_with_cfg` (timm/models/_builder.py): it
    applies our pretrained_cfg, wraps `features_only` models (FeatureGetterNet over forward_intermediates, one
    feature map per local module) and loads weights (pretrained_cfg 'file'; with another num_classes it drops
    every classifier in pretrained_cfg['classifier'], and adapts first_conv to another in_chans).

    `values`: config keys; `kwargs`: create_model's keyword arguments, config keys among them unless `fixed`
    (a trained run's net cannot change shape). `weights`: the file `pretrained` loads. Raises UsageError."""
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in TIMM_OPTIONS if k in kwargs}
    num_classes, in_chans = kwargs.pop("num_classes", None), kwargs.pop("in_chans", None)
    unknown = [k for k in kwargs if fixed or k not in FIELDS]
    if unknown:
        takes = ("num_classes, in_chans and timm's pretrained/features options" if fixed else
                 "config keys (see python train.py --help), num_classes, in_chans and timm's pretrained/features "
                 "options")
        raise UsageError(f"timm.create_model({variant!r}): unknown keyword {unknown[0]!r}; greedy models take {takes}")
    cfg = build_config({**values, **{k: coerce(k, v) for k, v in kwargs.items()}}, check_data=False)
    info = dataset_info(cfg.dataset)
    num_classes, in_chans = num_classes or cfg.num_classes or info.num_classes, in_chans or info.in_chans
    net = create_greedy_net(cfg, num_classes=num_classes, in_chans=in_chans)
    pretrained_cfg = greedy_pretrained_cfg(cfg, net)
    given = options.pop("pretrained_cfg", None)
    if given is not None and not isinstance(given, dict):
        raise UsageError(f"timm.create_model({variant!r}): pretrained_cfg must be a dict of entries (got {given!r})")
    pretrained_cfg.update(given or {})
    overlay = dict(options.pop("pretrained_cfg_overlay", None) or {})
    if weights is not None:
        overlay.setdefault("file", str(weights))
    if pretrained and not any(overlay.get(k) or pretrained_cfg.get(k) for k in ("file", "url", "hf_hub_id")):
        raise UsageError(f"timm.create_model({variant!r}, pretrained=True): greedy models have no published weights; "
                         "load a trained run with timm.create_model('greedy_run', run_dir=..., pretrained=True)")
    feature_cfg = {"feature_cls": "getter", "out_indices": tuple(range(net.num_stages))}
    try:
        return build_model_with_cfg(lambda **_: net, variant, pretrained, pretrained_cfg=pretrained_cfg,
                                    pretrained_cfg_overlay=overlay, feature_cfg=feature_cfg,
                                    num_classes=num_classes, in_chans=in_chans, **options)
    except (RuntimeError, OSError) as err:
        raise UsageError(f"timm.create_model({variant!r}): {' '.join(str(err).split())[:300]}") from err


def _from_preset(preset: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """A shipped config's net (configs/<preset>.yaml); keyword arguments override config keys (num_classes,
    in_chans too) and timm's options (features_only, out_indices, pretrained_cfg_overlay) apply."""
    return _build(f"greedy_{preset}", load_yaml(CONFIG_DIR / f"{preset}.yaml"), pretrained, kwargs)


@register_model
def greedy_run(pretrained: bool = False, run_dir: str | Path | None = None, **kwargs) -> nn.Module:
    """A trained run's net: `timm.create_model("greedy_run", run_dir="runs/NAME", pretrained=True)`.

    Built from run_dir/config.yaml; `pretrained` loads run_dir/model.safetensors through timm's pretrained
    machinery. With another `num_classes` every head's classifier is re-initialized (timm drops the layers
    pretrained_cfg['classifier'] lists) and every other weight is the run's. Raises UsageError for a run_dir
    that is not a finished run."""
    if run_dir is None:
        raise UsageError("timm.create_model('greedy_run'): pass run_dir='runs/NAME' (a directory made by train.py)")
    run = RunDir.open(run_dir)
    weights = run.path / "model.safetensors"
    if pretrained and not weights.is_file():
        raise UsageError(f"{run.path} has no model.safetensors (the run has not finished); finish it with "
                         f"`python train.py --resume {run.path}` or pass pretrained=False")
    return _build("greedy_run", load_yaml(run.config_path), pretrained, kwargs, weights=weights, fixed=True)


@register_model
def greedy_digits_k2(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("digits_k2", pretrained, **kwargs)


@register_model
def greedy_fashion_mnist_k2(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("fashion_mnist_k2", pretrained, **kwargs)


@register_model
def greedy_cifar10_k1(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("cifar10_k1", pretrained, **kwargs)


@register_model
def greedy_cifar10_k2(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("cifar10_k2", pretrained, **kwargs)


@register_model
def greedy_cifar10_k3(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("cifar10_k3", pretrained, **kwargs)


@register_model
def greedy_imagenet_k1(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("imagenet_k1", pretrained, **kwargs)


@register_model
def greedy_imagenet_k2(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("imagenet_k2", pretrained, **kwargs)


@register_model
def greedy_imagenet_k3(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("imagenet_k3", pretrained, **kwargs)


@register_model
def greedy_vgg11_k3(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("vgg11_k3", pretrained, **kwargs)


@register_model
def greedy_cifar10_resnet32(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("cifar10_resnet32", pretrained, **kwargs)


@register_model
def greedy_cifar10_resnet110(pretrained: bool = False, **kwargs) -> nn.Module:
    return _from_preset("cifar10_resnet110", pretrained, **kwargs)
