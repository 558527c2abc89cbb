"""MAN and MAN++ (Su et al. 2024, 2026): the EMA copy follows the next module's first unit exactly as
m * theta_ema + (1 - m) * theta, the base objective sees LB(h) + EMA(h), MAN++'s s learns."""

import copy

import pytest
import torch

from greedy.builder import GreedyBuilder
from greedy.config import build_config, load_yaml
from greedy.models import create_greedy_net
from greedy.objectives.man import ema_update, frozen_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def decoupled(objective: str, **keys):
    cfg = build_config({**load_yaml("configs/digits_resnet.yaml"), "num_modules": 3, "mode": "decoupled",
                        "objective": objective, **keys}, check_data=False)
    torch.manual_seed(0)
    net = create_greedy_net(cfg, num_classes=10, in_chans=1)
    builder = GreedyBuilder.for_config(cfg, net, (1, 8, 8), (0.5,), (0.25,))
    return net, builder, builder.stage(0)


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def step(stage, optimizers, x, y):
    """One decoupled step, as greedy.trainer.decoupled_step takes it."""
    h = stage.prefix(x)
    for part, optimizer in zip(stage.parts, optimizers, strict=True):
        out, _, terms = part(h, y, x)
        sum(terms.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        h = out.detach()


def test_ema_update_is_m_theta_ema_plus_1_minus_m_theta():
    torch.manual_seed(0)
    source, ema = torch.nn.Linear(3, 2), frozen_copy(torch.nn.Linear(3, 2))
    assert not list(ema.parameters()) and [name for name, _ in ema.named_buffers()] == ["weight", "bias"]
    expected = [b.clone() for b in ema.buffers()]
    ema_update(ema, source, 0.9)
    for e, p, got in zip(expected, source.parameters(), ema.buffers(), strict=True):
        assert torch.equal(got, 0.9 * e + (1 - 0.9) * p.detach())


def test_man_ema_follows_the_next_unit_after_one_and_several_steps():
    net, builder, stage = decoupled("man", man_momentum=0.9)
    first = builder.objectives[0]
    assert first.next_unit is net.units(1)[0] and first.next_unit_name == net.module_units[1][0]
    weights = [name for name, _ in first.next_unit.named_parameters()]
    ema = dict(first.ema.named_buffers())
    assert not list(first.ema.parameters())  # no optimizer reaches the EMA copy
    assert all(p.requires_grad for p in first.lb.parameters())
    # both copies start from the next unit's weights
    assert all(torch.equal(a, b) for a, b in zip(first.lb.parameters(), first.next_unit.parameters(), strict=True))
    assert all(torch.equal(ema[n], p) for n, p in first.next_unit.named_parameters())
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.1) for p in stage.parts]
    expected = [ema[n].clone() for n in weights]
    for t in range(4):
        # the update happens once per step, before the copy is used, from the next unit's current weights
        theta = [p.detach().clone() for p in first.next_unit.parameters()]
        expected = [0.9 * e + (1 - 0.9) * th for e, th in zip(expected, theta, strict=True)]
        step(stage, optimizers, *batch(t))
        got = [ema[n] for n in weights]
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True)), f"after step {t + 1}"
    # the next unit moved (module 2 trains it), and the EMA copy lags behind it
    assert not all(torch.equal(ema[n], p) for n, p in first.next_unit.named_parameters())


def test_man_terms_are_the_base_objectives_on_the_momentum_input():
    _, builder, stage = decoupled("man", man_base="infopro_ce")
    first = builder.objectives[0]
    part = stage.parts[0]
    x, y = batch()
    _, _, terms = part(stage.prefix(x), y, x)
    assert list(terms) == ["recon", "task", "readout"]
    # the base's modules are sized for y, the output of stage2_block1 (16 x 4 x 4), not for h (8 x 8 x 8)
    assert first.next_unit_name == "stage2_block1" and first.spec.out_shape == (8, 8, 8)
    assert first.base.task_head[0].in_channels == 16 and first.base.decoder[0].in_channels == 16
    _, dgl_builder, dgl_stage = decoupled("man", man_base="dgl")
    _, _, terms = dgl_stage.parts[0](dgl_stage.prefix(x), y, x)
    assert list(terms) == ["ce", "readout"]
    _, _, last_terms = stage.parts[-1](torch.zeros(16, 16, 4, 4), y, x)  # module 3 takes module 2's 16 x 4 x 4
    assert list(last_terms) == ["ce"] and not hasattr(builder.objectives[-1], "ema")


def test_man_pp_scale_receives_a_gradient_and_moves():
    _, builder, stage = decoupled("man_pp")
    first = builder.objectives[0]
    assert first.s.item() == 1.0
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.5) for p in stage.parts]
    x, y = batch()
    h = stage.prefix(x)
    _, _, terms = stage.parts[0](h, y, x)
    sum(terms.values()).backward()
    assert first.s.grad is not None and first.s.grad.abs().item() > 0
    optimizers[0].zero_grad()
    before = copy.deepcopy(first.s.detach())
    for t in range(3):
        step(stage, optimizers, *batch(t))
    assert first.s.item() != before.item()


def test_man_copies_train_with_their_module_not_the_next():
    """LB and the base's modules are the part's parameters; the next unit is not (the next module trains it)."""
    _, builder, stage = decoupled("man")
    first = builder.objectives[0]
    own = {id(p) for p in stage.parts[0].parameters()}
    assert all(id(p) in own for p in first.lb.parameters()) and all(id(p) in own for p in first.base.parameters())
    assert not any(id(p) in own for p in first.next_unit.parameters())
    assert not any("_next" in k for k in stage.parts[0].state_dict())
    assert any(k.startswith("objective.ema.") for k in stage.parts[0].state_dict())  # saved in the states
