"""InfoPro (Wang et al., ICLR 2021): the lambda schedule of the paper's grid, the supervised contrastive loss against
its formula, the decoder's BCE against de-normalised inputs, and the terms each module returns."""

import math

import pytest
import torch
import torch.nn.functional as F

from greedy.builder import GreedyBuilder
from greedy.models import GreedyNet
from greedy.objectives import ModuleSpec, create_objective
from greedy.objectives.infopro import InfoProContrast, infopro_weights, supervised_contrastive

pytestmark = pytest.mark.usefixtures("one_thread")


def close(a, b):
    return all(math.isclose(u, v, abs_tol=1e-12) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("lambdas, num_modules, expected", [
    # ResNet-32, contrast (the paper's grid): (first lambda1, lambda2, last lambda1, lambda2)
    ((5, 1, 0, 0), 2, [(5, 1)]),
    ((6, 0, 1, 2), 4, [(6, 0), (3.5, 1), (1, 2)]),
    ((5, 0.05, 0.2, 0.5), 16, [(5 - 4.8 * i / 14, 0.05 + 0.45 * i / 14) for i in range(15)]),
    # ResNet-110, contrast
    ((1, 0, 0, 1), 4, [(1, 0), (0.5, 0.5), (0, 1)]),
])
def test_lambdas_interpolate_from_the_first_module_to_the_one_before_the_last(lambdas, num_modules, expected):
    got = [infopro_weights(lambdas, i, num_modules) for i in range(num_modules - 1)]
    assert all(close(g, e) for g, e in zip(got, expected, strict=True)), got
    with pytest.raises(ValueError, match="the last trains on cross-entropy"):
        infopro_weights(lambdas, num_modules - 1, num_modules)


def supcon_by_hand(z: torch.Tensor, y: list[int], t: float) -> float:
    """Khosla et al. 2020, eq. 2, one view, in plain Python; anchors without positives count 0."""
    z = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in z.tolist()]
    dot = lambda a, b: sum(p * q for p, q in zip(a, b, strict=True))  # noqa: E731
    total = 0.0
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        denominator = sum(math.exp(dot(z[i], z[a]) / t) for a in range(len(z)) if a != i)
        if positives:
            total += -sum(math.log(math.exp(dot(z[i], z[p]) / t) / denominator) for p in positives) / len(positives)
    return total / len(z)


def test_supervised_contrastive_equals_its_formula_and_ignores_scale():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = [0, 1, 0, 1, 2, 0]  # class 2 has a single sample: no positives
    loss = supervised_contrastive(z, torch.tensor(y), 0.5)
    assert math.isclose(loss.item(), supcon_by_hand(z, y, 0.5), rel_tol=1e-5)
    assert torch.allclose(supervised_contrastive(3.7 * z, torch.tensor(y), 0.5), loss)
    assert not torch.allclose(supervised_contrastive(z, torch.tensor(y), 0.07), loss)


def spec(index=0, num_modules=3):
    return ModuleSpec(index, num_modules, 3, out_shape=(4, 2, 2), image_shape=(1, 4, 4), mean=(0.5,), std=(0.25,))


def test_reconstruction_is_bce_against_the_de_normalised_input():
    torch.manual_seed(0)
    objective = create_objective("infopro_ce", spec())
    images = torch.rand(5, 1, 4, 4)  # in [0, 1]
    x = (images - 0.5) / 0.25  # normalized as the data set is
    h = torch.randn(5, 4, 2, 2)
    p = torch.sigmoid(objective.decoder(F.interpolate(h, size=(4, 4), mode="bilinear", align_corners=True)))
    expected = -(images * p.log() + (1 - images) * (1 - p).log()).mean()
    assert torch.allclose(objective.reconstruction(h, x), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["infopro_ce", "infopro_contrast"])
def test_terms_are_lambda_weighted_and_the_last_module_is_cross_entropy(name):
    torch.manual_seed(0)
    objective = create_objective(name, spec(1, 4), infopro_lambdas=[6, 0, 1, 2], contrast_temperature=0.1)
    assert (objective.lambda_recon, objective.lambda_task) == (3.5, 1.0) and objective.needs_input
    assert isinstance(objective, InfoProContrast) == (name == "infopro_contrast")
    assert objective.task_head[-1].out_features == (128 if name == "infopro_contrast" else 3)
    assert objective.task_head[0].stride == (2, 2) and objective.task_head[0].out_channels == 8  # width doubled
    h, x, y, logits = torch.randn(6, 4, 2, 2), torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2] * 2), torch.randn(6, 3)
    objective.eval()  # BatchNorm: the same statistics for both evaluations below
    terms = objective(h, logits, y, x)
    assert list(terms) == ["recon", "task", "readout"]
    assert torch.allclose(terms["recon"], 3.5 * objective.reconstruction(h, x))
    task = (supervised_contrastive(objective.task_head(h), y, 0.1) if name == "infopro_contrast"
            else F.cross_entropy(objective.task_head(h), y))
    assert torch.allclose(terms["task"], task)
    with pytest.raises(ValueError, match="needs the input images"):
        objective(h, logits, y)
    last = create_objective(name, ModuleSpec(3, 4, 3))
    assert list(last(None, logits, y)) == ["ce"] and list(last.parameters()) == []


def test_builder_gives_each_module_its_lambdas_and_shapes():
    torch.manual_seed(0)
    net = GreedyNet([8, 8, 16, 16], 10, in_chans=1, k=2, downsample=[3])
    builder = GreedyBuilder(net, "decoupled", "infopro_contrast", options={"infopro_lambdas": [6, 0, 1, 2]},
                            image_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))
    stage = builder.stage(0)
    assert stage.needs_input and [o.spec.index for o in stage.objectives] == [0, 1, 2, 3]
    assert [(o.lambda_recon, o.lambda_task) for o in stage.objectives[:3]] == [(6, 0), (3.5, 1), (1, 2)]
    assert [o.spec.out_shape for o in stage.objectives] == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4)]
    # the objective is a child of its part: trained and saved with it, never part of the net's weights
    assert any(k.startswith("objective.decoder") for k in stage.parts[0].state_dict())
    assert not any("objective" in k for k in net.state_dict())
    with pytest.raises(ValueError, match="infopro needs the output shape of module 1"):
        GreedyBuilder(net, "greedy", "infopro_ce")
    unknown = GreedyBuilder(net, "greedy", "infopro_ce", image_shape=(1, 8, 8)).objectives[0]  # --print-model's
    with pytest.raises(ValueError, match="the normalization of the images is not known"):
        unknown(torch.randn(2, 8, 8, 8), torch.randn(2, 10), torch.tensor([0, 1]), torch.randn(2, 1, 8, 8))
