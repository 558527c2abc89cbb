"""timm's model conventions on every greedy model: features_only, forward_features/forward_head/forward_intermediates,
get_classifier/reset_classifier, num_features, pretrained_cfg from the config, loading a trained run through timm."""

import pytest
import timm
import torch
from safetensors.torch import load_file

import greedy.models  # noqa: F401  (registers the greedy models with timm)
from greedy.errors import UsageError
from tests.helpers import TINY, cli

pytestmark = pytest.mark.usefixtures("one_thread")


def digits_net(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("greedy_digits_k2", widths=[8, 8, 16], **kwargs).eval()


def test_features_only_gives_one_feature_map_per_local_module():
    feats = timm.create_model("greedy_digits_k2", widths=[8, 8, 16], downsample=[3], features_only=True)
    out = feats(torch.randn(2, 1, 8, 8))
    assert [tuple(f.shape) for f in out] == [(2, 8, 8, 8), (2, 8, 8, 8), (2, 16, 4, 4)]
    assert feats.feature_info.channels() == [8, 8, 16] and feats.feature_info.reduction() == [1, 1, 2]
    last = timm.create_model("greedy_digits_k2", widths=[8, 8, 16], features_only=True, out_indices=(-1,))
    assert [tuple(f.shape) for f in last(torch.randn(2, 1, 8, 8))] == [(2, 16, 4, 4)]


def test_forward_head_of_forward_features_is_forward():
    net = digits_net()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.forward_head(net.forward_features(x)), net(x))
        assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (3, 16 * 4)
        final, inter = net.forward_intermediates(x)
        assert torch.equal(final, net.forward_features(x)) and len(inter) == 3
        assert all(torch.equal(a, b) for a, b in zip(inter, net.forward_blocks(x), strict=True))
        only = net.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert len(only) == 1 and torch.equal(only[0], inter[0])
    assert net.num_features == 16 == net.feature_info[-1]["num_chs"]


def test_reset_classifier_changes_only_the_classifiers():
    net = digits_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert net.get_classifier().out_features == 10
    net.reset_classifier(5)
    assert net.get_classifier().out_features == 5 and net.num_classes == 5
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    assert all(h.shape == (2, 5) for h in net.forward_heads(torch.randn(2, 1, 8, 8)))
    classifiers = net.pretrained_cfg["classifier"]
    assert classifiers == ("heads.0.fc", "heads.1.fc", "heads.2.fc")
    for key, value in net.state_dict().items():
        if not key.startswith(classifiers):
            assert torch.equal(value, before[key]), key


def test_reset_classifier_on_a_timm_final_head():
    net = timm.create_model("greedy_digits_k2", arch="timm", model="resnet10t", num_modules=2, final_head="timm",
                            img_size=16)
    net.reset_classifier(3)
    assert net.get_classifier().out_features == 3 and "heads.1.fc.weight" in net.state_dict()
    assert net.state_dict()["heads.1.fc.weight"].shape[0] == 3 and net(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_resolve_data_config_reads_the_config():
    data_cfg = timm.data.resolve_data_config({}, model=digits_net())
    assert data_cfg["input_size"] == (1, 8, 8)
    assert data_cfg["mean"] == pytest.approx((0.3054,), abs=1e-4)  # digits' training split, 0..16 scaled to 0..1
    assert data_cfg["std"] == pytest.approx((0.3761,), abs=1e-4)
    cifar = timm.data.resolve_data_config({}, model=timm.create_model("greedy_cifar10_k1", widths=[8, 8, 8, 8], k=1))
    assert cifar["input_size"] == (3, 32, 32) and cifar["mean"] == (0.4914, 0.4822, 0.4465)
    # the net's first conv (what timm adapts for another in_chans), never an auxiliary net's
    assert digits_net().pretrained_cfg["first_conv"] == "blocks.0.conv"
    resnet = timm.create_model("greedy_cifar10_resnet32", depths=[1, 1, 1])
    assert resnet.pretrained_cfg["first_conv"] == "blocks.0.0"  # the stem's conv (a ResNet unit is a Sequential)


def test_unknown_keyword_is_one_clear_line():
    with pytest.raises(UsageError, match=r"unknown keyword 'drop_rate'; greedy models take config keys"):
        timm.create_model("greedy_digits_k2", drop_rate=0.1)
    with pytest.raises(UsageError, match="is not a run directory"):
        timm.create_model("greedy_run", run_dir="/nonexistent/run")
    with pytest.raises(UsageError, match="greedy models have no published weights"):
        timm.create_model("greedy_digits_k2", pretrained=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("timm-run")
    cli("train.py", *TINY, "--epochs", "1", "--out-dir", str(out), "--name", "run")
    return out / "run"


def test_load_a_trained_run_with_the_same_classes(trained_run):
    state = load_file(trained_run / "model.safetensors")
    net = timm.create_model("greedy_run", run_dir=str(trained_run), pretrained=True).eval()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    rebuilt = timm.create_model("greedy_run", run_dir=str(trained_run)).eval()
    rebuilt.load_state_dict(state)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))


def test_load_a_trained_run_with_another_class_count(trained_run):
    state = load_file(trained_run / "model.safetensors")
    torch.manual_seed(1)
    net = timm.create_model("greedy_run", run_dir=str(trained_run), pretrained=True, num_classes=5).eval()
    classifiers = net.pretrained_cfg["classifier"]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    for key, value in net.state_dict().items():
        if key.startswith(classifiers):
            assert value.shape[0] == 5, key
        else:
            assert torch.equal(value, state[key]), key
    with pytest.raises(UsageError, match="unknown keyword 'num_modules'"):
        timm.create_model("greedy_run", run_dir=str(trained_run), num_modules=2)
