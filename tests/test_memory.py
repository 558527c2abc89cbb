"""A greedy stage holds one block's activations: the frozen prefix saves nothing for backward."""

import copy

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from greedy.builder import GreedyBuilder
from greedy.models import GreedyNet
from greedy.profiling import saved_tensor_bytes
from greedy.trainer import decoupled_step, train_step

X = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(8) % 10


def tiny_net() -> GreedyNet:
    torch.manual_seed(0)
    return GreedyNet([8, 8, 16], 10, in_chans=1, k=2, downsample=[3])


def not_activations(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers: saved for backward too, but they are weights, not activations."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def bare_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Saved bytes of a plain forward/backward of `module` alone on x."""
    return saved_tensor_bytes(lambda: F.cross_entropy(module(x)[1], Y).backward(), not_activations(module))


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


@pytest.mark.parametrize("j", [0, 1, 2])
def test_greedy_stage_saves_exactly_block_and_head(accelerator, j):
    net = tiny_net()
    stage = GreedyBuilder(net).stage(j)
    assert not stage.prefix.training and not any(p.requires_grad for p in stage.prefix.parameters())
    model, optimizer = accelerator.prepare(stage.trainable, torch.optim.SGD(stage.trainable.parameters(), lr=0.1))
    staged = saved_tensor_bytes(lambda: train_step(stage.prefix, model, optimizer, accelerator, X, Y),
                                not_activations(net))
    with torch.no_grad():
        h = stage.prefix(X)
    alone = bare_bytes(copy.deepcopy(stage.trainable), torch.randn_like(h))  # same shape, fresh values
    assert staged == alone > 0

    # The original recipe (prefix with autograd, then detach) saves the prefix's activations as well.
    grad_prefix = copy.deepcopy(stage.prefix).requires_grad_(True)
    trainable = copy.deepcopy(stage.trainable)
    with_graph = saved_tensor_bytes(lambda: F.cross_entropy(trainable(grad_prefix(X).detach())[1], Y).backward(),
                                    not_activations(grad_prefix, trainable))
    assert with_graph > staged if j > 0 else with_graph == staged


def test_e2e_saves_every_block(accelerator):
    net = tiny_net()
    stage = GreedyBuilder(net, "e2e").stage(0)
    model, optimizer = accelerator.prepare(stage.trainable, torch.optim.SGD(stage.trainable.parameters(), lr=0.1))
    e2e = saved_tensor_bytes(lambda: train_step(stage.prefix, model, optimizer, accelerator, X, Y),
                             not_activations(net))
    last = GreedyBuilder(tiny_net()).stage(2)
    with torch.no_grad():
        h = last.prefix(X)
    assert e2e > bare_bytes(last.trainable, h)


def test_decoupled_step_saves_at_most_its_blocks_alone(accelerator):
    """The labels and block outputs that parts share are counted once, hence <= the sum of the greedy stages."""
    net = tiny_net()
    stage = GreedyBuilder(net, "decoupled").stage(0)
    parts = stage.parts
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.1) for p in parts]
    prepared = accelerator.prepare(*parts, *optimizers)
    models, optimizers = list(prepared[:3]), list(prepared[3:])
    total = saved_tensor_bytes(lambda: decoupled_step(stage.prefix, models, optimizers, accelerator, X, Y),
                               not_activations(net))
    alone = []
    for j in range(3):
        greedy = GreedyBuilder(copy.deepcopy(net)).stage(j)
        with torch.no_grad():
            x_j = greedy.prefix(X)
        alone.append(bare_bytes(greedy.trainable, x_j))
    assert max(alone) < total <= sum(alone)


def resnet(seed: int = 0) -> GreedyNet:
    """A digits-sized CIFAR ResNet of 7 units in 3 modules (several units each)."""
    from greedy.config import build_config
    from greedy.models import create_greedy_net

    torch.manual_seed(seed)
    cfg = build_config({"arch": "resnet", "widths": [8, 16, 32], "depths": [2, 2, 2], "num_modules": 3,
                        "final_head": "linear"}, check_data=False)
    return create_greedy_net(cfg, num_classes=10, in_chans=1, img_size=8)


def test_e2e_grad_checkpoint_keeps_less_and_trains_the_same(accelerator):
    """Gradient checkpointing per unit: the same step (weights and BatchNorm statistics bit for bit, the
    recomputation does not update the statistics twice) for fewer saved activation bytes."""
    results = []
    for ckpt in (False, True):
        net = resnet()
        stage = GreedyBuilder(net, "e2e", grad_checkpoint=ckpt).stage(0)
        assert (stage.trainable.checkpoint_units is not None) == ckpt
        optimizer = torch.optim.SGD(stage.trainable.parameters(), lr=0.1)
        saved = saved_tensor_bytes(lambda s=stage, o=optimizer: train_step(s.prefix, s.trainable, o, accelerator, X, Y),
                                   not_activations(net))
        results.append((saved, {k: v.clone() for k, v in net.state_dict().items()}))
    (plain, plain_state), (ckpt, ckpt_state) = results
    assert len(GreedyBuilder(resnet(), "e2e", grad_checkpoint=True).stage(0).trainable.checkpoint_units) == 7
    assert all(torch.equal(plain_state[k], ckpt_state[k]) for k in plain_state)
    assert 0 < ckpt < plain / 2, (ckpt, plain)  # only unit inputs are kept: measured 0.3 of plain
