import re

import pytest
import timm
import torch

import greedy.models  # noqa: F401  (registers the models with timm)
import train
from greedy.config import build_config, load_yaml
from greedy.models import GreedyNet
from greedy.models.heads import AuxiliaryHead

CONFIGS = ["digits_k2", "fashion_mnist_k2", "cifar10_k1", "cifar10_k2", "cifar10_k3",
           "imagenet_k1", "imagenet_k2", "imagenet_k3", "vgg11_k3"]


@pytest.mark.parametrize("name", CONFIGS)
def test_print_model_every_config(root, name, capsys, monkeypatch):
    monkeypatch.chdir(root)
    assert train.main(["-c", f"configs/{name}.yaml", "--print-model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header == ["stage", "units", "input", "block_out", "head", "block_params", "head_params", "model_params"]
    rows = [dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[3:]]
    # the printed counts are the net's own: block j's parameters, and the model after stage j (blocks 1..j + head j)
    net = train.check_model_shapes(build_config(load_yaml(f"configs/{name}.yaml"), check_data=False))
    assert [int(r["stage"]) for r in rows] == list(range(1, net.num_stages + 1))
    count = lambda module: sum(p.numel() for p in module.parameters())
    for j, row in enumerate(rows):
        assert int(row["block_params"].replace(",", "")) == count(net.blocks[j])
        assert int(row["head_params"].replace(",", "")) == count(net.heads[j])
        blocks = sum(count(b) for b in net.blocks[:j + 1])
        assert int(row["model_params"].replace(",", "")) == blocks + count(net.heads[j])
    if name == "cifar10_k3":  # the paper's first block: conv 3x3, 3 -> 128 channels, no bias, then BatchNorm
        assert rows[0]["input"] == "3x32x32" and rows[0]["block_out"] == "128x32x32"
        assert rows[0]["block_params"] == f"{3 * 128 * 9 + 2 * 128:,}"


def block_shapes(net, in_chans, size):
    with torch.no_grad():
        return [tuple(f.shape[1:]) for f in net.forward_blocks(torch.zeros(1, in_chans, size, size, device="meta"))]


def test_paper_shapes():
    with torch.device("meta"):
        k3 = timm.create_model("greedy_cifar10_k3")
        k1 = timm.create_model("greedy_cifar10_k1")
        inet = timm.create_model("greedy_imagenet_k3")
        inet1 = timm.create_model("greedy_imagenet_k1")
        vgg = timm.create_model("greedy_vgg11_k3")
    assert block_shapes(k3, 3, 32) == [(128, 32, 32), (128, 32, 32), (256, 16, 16), (256, 16, 16)]
    assert block_shapes(k1, 3, 32) == [(256, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (1024, 8, 8)]
    assert block_shapes(inet, 3, 224) == [(128, 112, 112), (128, 112, 112), (256, 56, 56), (256, 56, 56),
                                          (512, 28, 28), (512, 28, 28), (1024, 14, 14), (1024, 14, 14)]
    assert [s[0] for s in block_shapes(inet1, 3, 224)] == [256, 256, 512, 1024, 2048, 2048, 4096, 4096]
    assert block_shapes(inet1, 3, 224)[-1] == (4096, 7, 7)
    assert block_shapes(vgg, 3, 224)[-1] == (512, 14, 14)
    aux = sum(p.numel() for h in vgg.heads[:-1] for p in h.parameters())
    assembled = sum(p.numel() for p in vgg.parameters()) - aux
    assert assembled == 132_868_840 - 2752  # torchvision's vgg11_bn, less its conv biases (redundant before BN)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in k1.modules())


@pytest.mark.parametrize("k, convs", [(1, 0), (2, 1), (3, 2)])
def test_auxiliary_head_depth(k, convs):
    head = AuxiliaryHead(16, 10, k=k)
    assert len(head.convs) == convs
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 10)
    assert head.fc.in_features == 16 * 2 * 2


def test_timm_create_model_overrides():
    net = timm.create_model("greedy_digits_k2", num_classes=3, k=1)
    assert isinstance(net, GreedyNet)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert all(len(h.convs) == 0 for h in net.heads)
