"""arch timm: any timm CNN as the backbone through the real CLI (config keys model, pretrained, final_head timm)."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import train
from greedy.config import build_config, load_yaml
from greedy.errors import exit_code
from greedy.models import create_greedy_net
from greedy.models.backbones import TimmHead
from tests.helpers import assert_first_module_frozen

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_TIMM = ["-c", "configs/digits_timm_resnet.yaml", "--epochs", "2", "--no-progress"]


def timm_cfg(name: str = "digits_timm_resnet", **overrides):
    return build_config({**load_yaml(f"configs/{name}.yaml"), **overrides}, check_data=False)


@pytest.fixture(scope="module")
def greedy_timm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("timm")
    assert train.main([*TINY_TIMM, "--cache", "off", "--out-dir", str(out), "--name", "greedy"]) == 0
    return out / "greedy"


@pytest.mark.training
def test_greedy_timm_resnet_trains_above_chance(greedy_timm_run):
    summary = json.loads((greedy_timm_run / "summary.json").read_text())
    assert [r["stage"] for r in summary["rows"]] == [1, 2]
    assert min(summary["stage_test_acc"]) > 0.3 and summary["final_test_acc"] > 0.6, summary  # chance is 0.1


def test_frozen_timm_module_bit_identical_after_stage_2(greedy_timm_run):
    assert_first_module_frozen(greedy_timm_run)


def test_saved_run_round_trips_with_the_timm_head(greedy_timm_run):
    state = load_file(greedy_timm_run / "model.safetensors")
    assert {"heads.1.fc.weight", "heads.1.fc.bias"} <= set(state)  # resnet10t's own classifier, saved
    net = create_greedy_net(timm_cfg(), num_classes=10, in_chans=1, img_size=8)
    net.load_state_dict(state, strict=True)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.training
@pytest.mark.parametrize("mode", ["e2e", "decoupled"])
def test_e2e_and_decoupled_on_a_timm_backbone(tmp_path, mode):
    assert train.main([*TINY_TIMM, "--mode", mode, "--out-dir", str(tmp_path), "--name", mode]) == 0
    summary = json.loads((tmp_path / mode / "summary.json").read_text())
    assert summary["mode"] == mode and summary["final_test_acc"] > 0.3


def test_final_head_timm_is_exactly_the_timm_model():
    torch.manual_seed(0)
    net = create_greedy_net(timm_cfg(img_size=16), num_classes=10, in_chans=1, img_size=16)
    head = net.heads[-1]
    assert isinstance(head, TimmHead)
    model = head.model
    owned = {id(p) for p in net.parameters()}
    assert all(id(p) in owned for p in model.parameters())  # the net holds the very modules of the timm model
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    fresh = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))


@pytest.mark.parametrize("num_modules", [2, 4])
def test_print_model_resnet50(root, num_modules, capsys, monkeypatch):
    monkeypatch.chdir(root)
    assert train.main(["-c", "configs/imagenet_timm_resnet50.yaml", "--num-modules", str(num_modules),
                       "--print-model"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[3:]
    assert len(rows) == num_modules
    block_params = sum(int(r.split()[-3].replace(",", "")) for r in rows)
    final_head = int(rows[-1].split()[-2].replace(",", ""))
    resnet50 = sum(p.numel() for p in timm.create_model("resnet50", pretrained=False).parameters())
    assert block_params + final_head == resnet50 == 25_557_032
    assert rows[-1].split()[-1] == "25,557,032" and "TimmHead" in rows[-1]


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet5O"], "unknown timm model 'resnet5O'; did you mean resnet50"),
    (["--model", ""], "config key 'model': arch timm needs a timm model name"),
    (["--arch", "plain"], "config key 'model': 'resnet10t' is for arch timm (arch is plain)"),
    (["-c", "configs/digits_k2.yaml", "--final-head", "timm"], "config key 'final_head': 'timm' (the timm model's "
                                                               "own classifier) is for arch timm (arch is plain)"),
    (["--num-modules", "none"], "config key 'num_modules': arch timm needs num_modules (or split_points)"),
    (["--model", "test_vit", "--img-size", "32"], "timm model 'test_vit' cannot be split into a chain of local "
                                                  "modules"),
])
def test_timm_errors_are_one_line(tmp_path, capsys, args, message):
    code = exit_code(train.main, [*TINY_TIMM, "--out-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not any(tmp_path.iterdir())
