"""greedy.models.backbones: timm CNNs cut into chains of units, proven equal to forward_features and model(x)."""

import huggingface_hub
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from greedy.errors import UsageError, exit_code, run_cli
from greedy.models.backbones import (
    WHAT_WORKS,
    Chain,
    model_units,
    timm_units,
    unit_flops,
    unit_rows,
    unit_table,
    verify_chain,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (3, 32, 32)
BLOCKS_B0 = ["blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0", "blocks.2.1", "blocks.3.0", "blocks.3.1",
             "blocks.3.2", "blocks.4.0", "blocks.4.1", "blocks.4.2", "blocks.5.0", "blocks.5.1", "blocks.5.2",
             "blocks.5.3", "blocks.6.0"]
CONVNEXT_ATTO = ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.downsample", "stages.1.blocks.0",
                 "stages.1.blocks.1", "stages.2.downsample", *(f"stages.2.blocks.{i}" for i in range(6)),
                 "stages.3.downsample", "stages.3.blocks.0", "stages.3.blocks.1"]
# name, create_model arguments (vgg: a narrow ConvMlp pre-logits, else it holds 100M parameters), units in order
FAMILIES = {
    "resnet18": ({}, ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                      "layer4.0", "layer4.1"]),
    "resnet26": ({}, ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                      "layer4.0", "layer4.1"]),
    "vgg11": ({"mlp_ratio": 0.01}, ["features.0", "features.3", "features.6", "features.8", "features.11",
                                    "features.13", "features.16", "features.18"]),
    "convnext_atto": ({}, CONVNEXT_ATTO),
    "efficientnet_b0": ({}, ["conv_stem", *BLOCKS_B0, "conv_head"]),
    "mobilenetv3_small_100": ({}, ["conv_stem", "blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0",
                                   "blocks.2.1", "blocks.2.2", "blocks.3.0", "blocks.3.1", "blocks.4.0",
                                   "blocks.4.1", "blocks.4.2", "blocks.5.0"]),
}
# what each multi-module unit holds, by its names in the model
MEMBERS = {
    "resnet18": {"conv1": ["conv1", "bn1", "act1", "maxpool"]},
    "vgg11": {"features.0": ["features.0", "features.1", "features.2"], "features.6": ["features.6", "features.7"]},
    "convnext_atto": {"stem": ["stem.0", "stem.1", "stages.0.downsample"]},
    "efficientnet_b0": {"conv_stem": ["conv_stem", "bn1"], "conv_head": ["conv_head", "bn2"]},
}


def chain(units, x):
    for _, unit in units:
        x = unit(x)
    return x


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_a_proven_chain(name):
    kwargs, expected_names = FAMILIES[name]
    torch.manual_seed(0)
    units, head = timm_units(name, num_classes=10, input_size=SIZE, **kwargs)
    model = head.model
    assert [n for n, _ in units] == expected_names
    modules = {r["name"]: r["modules"] for r in unit_rows(units, SIZE)}
    for unit_name, members in MEMBERS.get(name, {}).items():
        assert modules[unit_name] == members
    assert model.training and all(m.training for _, m in units)  # the proof left the training flags as they were
    model.eval()
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = chain(units, x.clone())
        assert torch.equal(feats, model.forward_features(x.clone()))
        assert torch.equal(head(feats), model(x.clone()))
        assert head(feats).shape == (2, 10)
    assert verify_chain(model, units, SIZE, head=head, seed=3)
    # every parameter is in exactly one unit or in the head, which owns the classifier
    params = [id(p) for _, m in [*units, ("head", head)] for p in m.parameters()]
    assert sorted(params) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in model.get_classifier().parameters()} <= {id(p) for p in head.parameters()}


def test_names_follow_the_model():
    """Each unit is the module of that name in the model, or a Chain starting with it."""
    units, head = timm_units("resnet18", input_size=SIZE)
    for name, unit in units:
        first = unit[0] if isinstance(unit, Chain) else unit
        assert first is head.model.get_submodule(name)


def test_verify_chain_catches_a_wrong_chain():
    units, head = timm_units("resnet18", input_size=SIZE)
    without = units[:2] + units[3:]  # layer1.1 left out
    assert not verify_chain(head.model, without, SIZE)
    # why the proof perturbs the weights: timm zero-inits each block's last norm, so a fresh block is the identity
    assert verify_chain(head.model, without, SIZE, perturb=False)
    swapped = [units[0], units[2], units[1], *units[3:]]
    assert not verify_chain(head.model, swapped, SIZE)


def test_head_train_mode_reaches_the_model():
    _, head = timm_units("resnet18", input_size=SIZE, drop_rate=0.5)
    head.eval()
    assert not head.model.training and not head.model.fc.training
    head.train()
    assert head.model.training


def test_vit_is_refused():
    with pytest.raises(UsageError) as err:
        timm_units("vit_tiny_patch16_224", img_size=32, input_size=SIZE)
    assert str(err.value) == (
        "timm model 'vit_tiny_patch16_224' cannot be split into a chain of local modules: its forward_features "
        "is not the composition of its children; what works: timm CNNs whose forward_features runs their "
        "children one after another (e.g. resnet, vgg, convnext, efficientnet)")


class Toy(nn.Module):
    """A timm-style model: forward_features runs stem then blocks (a ModuleList), or adds a skip around them."""

    def __init__(self, skip: bool = False, train_only_dropout: bool = False):
        super().__init__()
        self.skip, self.train_only_dropout = skip, train_only_dropout
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)])
        self.fc = nn.Linear(4, 2)

    def forward_features(self, x):
        x = self.stem(x)
        y = x
        for block in self.blocks:
            y = block(y)
        if self.train_only_dropout and self.training:  # functional, between no children: not in the chain
            y = nn.functional.dropout(y, 0.5)
        return x + y if self.skip else y

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


def test_toy_chain_and_refused_toy():
    units, head = model_units(Toy(), (3, 8, 8), name="toy")
    assert [n for n, _ in units] == ["stem", "blocks.0", "blocks.2"]
    assert unit_rows(units, (3, 8, 8))[1]["modules"] == ["blocks.0", "blocks.1"]
    with pytest.raises(UsageError) as err:
        model_units(Toy(skip=True), (3, 8, 8), name="toy_skip")
    assert str(err.value) == ("timm model 'toy_skip' cannot be split into a chain of local modules: its "
                              f"forward_features is not the composition of its children; {WHAT_WORKS}")
    with pytest.raises(UsageError) as err:  # equal in eval mode, not in training mode
        model_units(Toy(train_only_dropout=True), (3, 8, 8), name="toy_dropout")
    assert str(err.value) == ("timm model 'toy_dropout' cannot be split into a chain of local modules: its "
                              "chain differs from forward_features in the proof (perturbed weights, eval and "
                              f"training mode); {WHAT_WORKS}")


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_atto"])
def test_stochastic_depth_and_dropout_pass_in_training_mode(name):
    units, head = timm_units(name, input_size=SIZE, drop_rate=0.5, drop_path_rate=0.5)
    assert verify_chain(head.model, units, SIZE, head=head, seed=5)


def test_unknown_name():
    with pytest.raises(UsageError) as err:
        timm_units("resnet5o")
    assert str(err.value).startswith("unknown timm model 'resnet5o'; did you mean resnet50")
    with pytest.raises(UsageError, match=r"^unknown timm model 'no_such_net_at_all'; see timm.list_models\(\)$"):
        timm_units("no_such_net_at_all")


def test_pretrained_offline_is_one_line(monkeypatch, tmp_path, capsys):
    """With HF_HUB_OFFLINE and an empty cache, fetching weights fails as one line and exit code 2."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    line = ("cannot fetch pretrained weights for timm model 'resnet18' (LocalEntryNotFoundError); this machine may "
            "be offline: put them in the Hugging Face cache (HF_HOME) on a machine with internet, or use "
            "pretrained=False")
    with pytest.raises(UsageError) as err:
        timm_units("resnet18", pretrained=True, input_size=SIZE)
    assert str(err.value) == line
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: timm_units("resnet18", pretrained=True, input_size=SIZE) and 0)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {line}\n"


UNREACHABLE = ("cannot fetch pretrained weights for timm model 'resnet18': huggingface.co cannot be reached ([Errno "
               "-2] Name or service not known) and they are not in the Hugging Face cache; put them there (HF_HOME) "
               "on a machine with internet, or use pretrained=False")


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A machine without the hub: its host name does not resolve (as here), no proxy, an empty cache."""
    import socket

    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://huggingface.co")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hub"


def test_pretrained_without_the_hub_is_refused_at_once(no_hub, monkeypatch, tmp_path, capsys):
    """Not in the cache and the hub unreachable: one line before any download is tried (huggingface_hub's retries
    took 51 s here), also through train.py, which writes nothing."""
    import timm

    import train

    def never(*args, **kwargs):
        raise AssertionError("timm.create_model must not be called")

    monkeypatch.setattr(timm, "create_model", never)
    with pytest.raises(UsageError) as err:
        timm_units("resnet18", pretrained=True, input_size=SIZE)
    assert str(err.value) == UNREACHABLE
    out = tmp_path / "runs"
    code = exit_code(train.main, ["-c", "configs/digits_timm_resnet.yaml", "--model", "resnet18", "--pretrained",
                                  "true", "--out-dir", str(out)])
    assert code == 2 and capsys.readouterr().err == f"error: {UNREACHABLE}\n" and not out.exists()


def test_pretrained_weights_in_the_cache_load_without_the_hub(no_hub):
    """In the cache and the hub unreachable: loaded from the cache in offline mode (set only for that call)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False)
    snapshot = no_hub / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (no_hub / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (no_hub / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0" * 40)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    units, head = timm_units("resnet18", pretrained=True, input_size=SIZE)
    assert torch.equal(head.model.conv1.weight, reference.conv1.weight)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_unit_table_shapes_params_flops():
    units, head = timm_units("resnet18", input_size=SIZE)
    rows = unit_rows(units, SIZE)
    model = head.model.eval()
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        for (_, unit), row in zip(units, rows, strict=True):
            x = unit(x)
            assert row["out_shape"] == tuple(x.shape[1:])
            assert row["params"] == sum(p.numel() for p in unit.parameters())
        with FlopCounterMode(display=False) as counter:
            model.forward_features(torch.randn(1, *SIZE))
    flops = unit_flops(units, SIZE)
    assert flops == [r["flops"] for r in rows] and all(f > 0 for f in flops)
    assert sum(flops) == counter.get_total_flops()
    table = unit_table(units, SIZE).splitlines()
    assert len(table) == len(units) + 2
    assert table[1].split()[:3] == ["0", "conv1", "64x8x8"] and table[1].endswith("conv1, bn1, act1, maxpool")
