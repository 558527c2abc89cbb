"""Local objectives: the registry, `ce` as the trainer's default, and the interface the trainer calls."""

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from greedy.builder import GreedyBuilder
from greedy.models import GreedyNet
from greedy.objectives import OBJECTIVES, LocalObjective, ModuleSpec, create_objective, total_loss
from greedy.objectives.ce import CrossEntropy
from greedy.trainer import decoupled_step, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


class Smoothed(LocalObjective):
    """A two-term objective for the tests: cross-entropy with label smoothing, plus a weighted L2 of the logits."""

    term_names = ("smooth_ce", "l2")

    def forward(self, h, logits, y, x=None):
        return {"smooth_ce": F.cross_entropy(logits, y, label_smoothing=0.1), "l2": 0.01 * logits.pow(2).mean()}


def batch(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def net(seed=0):
    torch.manual_seed(seed)
    return GreedyNet([8, 8, 16], 10, in_chans=1, k=2)


def test_ce_is_registered_and_is_cross_entropy():
    assert "ce" in OBJECTIVES and OBJECTIVES["ce"] is CrossEntropy
    spec = ModuleSpec(1, 3, 10)
    objective = create_objective("ce", spec)
    assert isinstance(objective, CrossEntropy) and objective.spec == spec and not spec.last
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    terms = objective(None, logits, y)
    assert list(terms) == ["ce"] and torch.equal(terms["ce"], F.cross_entropy(logits, y))
    assert total_loss(terms) is terms["ce"]  # one term: the same tensor, no extra operation
    assert list(objective.parameters()) == []  # ce owns nothing: a run's weights and states are unchanged


def test_builder_gives_every_stage_its_objectives():
    for mode, counts in (("greedy", [1, 1, 1]), ("e2e", [1]), ("decoupled", [3])):
        builder = GreedyBuilder(net(), mode)
        stages = [builder.stage(i) for i in range(builder.num_stages)]
        assert [len(s.objectives) for s in stages] == counts
        assert all(isinstance(o, CrossEntropy) for s in stages for o in s.objectives)
    specs = [o.spec for o in GreedyBuilder(net(), "decoupled").stage(0).objectives]
    assert [(s.index, s.num_modules, s.last) for s in specs] == [(0, 3, False), (1, 3, False), (2, 3, True)]


def test_the_trainer_minimises_the_objectives_terms():
    """train_step with the part's ce objective is bit-identical to plain cross-entropy; another objective's summed
    terms are what the step reports and descends."""
    x, y = batch()
    accelerator = Accelerator(cpu=True)
    results = []
    for objective in (None, CrossEntropy(), Smoothed()):
        stage = GreedyBuilder(net(), "greedy").stage(0)
        if objective is not None:
            stage.trainable.objective = objective
        optimizer = torch.optim.SGD(stage.trainable.parameters(), lr=0.1)
        loss, logits, terms = train_step(stage.prefix, stage.trainable, optimizer, accelerator, x, y)
        results.append((loss.detach(), [p.detach().clone() for p in stage.trainable.parameters()], logits.detach()))
    (ce_loss, ce_weights, _), (obj_loss, obj_weights, _), (sm_loss, sm_weights, sm_logits) = results
    same = lambda a, b: all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # noqa: E731
    assert torch.equal(ce_loss, obj_loss) and same(ce_weights, obj_weights)
    expected = F.cross_entropy(sm_logits, y, label_smoothing=0.1) + 0.01 * sm_logits.pow(2).mean()
    assert torch.allclose(sm_loss, expected) and not torch.equal(sm_loss, ce_loss)
    assert list(terms) == ["smooth_ce", "l2"]
    assert not same(ce_weights, sm_weights)


class Recorder(LocalObjective):
    """Cross-entropy that records the shape of the module output it is given."""

    def __init__(self, spec=None):
        super().__init__(spec)
        self.shapes = []

    def forward(self, h, logits, y, x=None):
        self.shapes.append(tuple(h.shape[1:]))
        return {"ce": F.cross_entropy(logits, y)}


def test_every_mode_hands_the_objective_the_module_output():
    """The objective of block j sees block j's output (e2e: the last block's), whatever the mode."""
    x, y = batch()
    accelerator = Accelerator(cpu=True)
    shapes = [tuple(out) for _, out in net().module_shapes(1, 8)]  # (input, output) shape of every block
    for mode in ("greedy", "e2e", "decoupled"):
        builder = GreedyBuilder(net(), mode)
        for i in range(builder.num_stages):
            stage = builder.stage(i)
            recorders = [Recorder() for _ in stage.parts]
            for part, recorder in zip(stage.parts, recorders, strict=True):
                part.objective = recorder
            optimizers = [torch.optim.SGD(p.parameters(), lr=0.0) for p in stage.parts]
            if stage.decoupled:
                decoupled_step(stage.prefix, stage.parts, optimizers, accelerator, x, y)
            else:
                train_step(stage.prefix, stage.trainable, optimizers[0], accelerator, x, y)
            blocks = range(3) if stage.decoupled else [stage.index]
            assert [r.shapes for r in recorders] == [[shapes[j]] for j in blocks], (mode, i)


def test_decoupled_parts_each_get_their_own_objective():
    x, y = batch()
    accelerator = Accelerator(cpu=True)
    stage = GreedyBuilder(net(), "decoupled").stage(0)
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.0) for p in stage.parts]
    for part, objective in zip(stage.parts, [CrossEntropy(), Smoothed(), CrossEntropy()], strict=True):
        part.objective = objective
    results = decoupled_step(stage.prefix, stage.parts, optimizers, accelerator, x, y)
    for j, (loss, logits, _) in enumerate(results):
        ce = F.cross_entropy(logits, y)
        assert torch.allclose(loss, ce) != (j == 1)  # block 2 trained on the smoothed objective
