"""PredSim (Nøkland & Eidnes 2019): its similarity matrices, its loss terms and its pooling, against values computed
by hand; its readout sends the block no gradient."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from greedy.builder import BlocksThenHead
from greedy.models.heads import LinearClassifier
from greedy.objectives import ModuleSpec, create_objective
from greedy.objectives.predsim import PredSim, pooled_size, similarity_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def by_hand(rows: list[list[float]]) -> list[list[float]]:
    """Cosine similarity of mean-centred rows, in plain Python."""
    centred = [[v - sum(r) / len(r) for v in r] for r in rows]
    unit = [[v / (math.sqrt(sum(u * u for u in r)) + 1e-8) for v in r] for r in centred]
    return [[max(-1.0, min(1.0, sum(a * b for a, b in zip(p, q, strict=True)))) for q in unit] for p in unit]


def test_label_similarity_matrix_by_hand():
    """One-hot rows of 3 classes, mean-centred: same class 1, different classes (2/3*-1/3*2 + 1/9) / (6/9) = -1/2."""
    y = torch.tensor([0, 1, 0])
    expected = torch.tensor([[1.0, -0.5, 1.0], [-0.5, 1.0, -0.5], [1.0, -0.5, 1.0]])
    assert torch.allclose(similarity_matrix(F.one_hot(y, 3)), expected, atol=1e-6)


def test_feature_similarity_matrix_uses_spatial_std_per_channel():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 4, 2, 2, generator=gen)
    rows = [[statistics.stdev(h[n, c].flatten().tolist()) for c in range(4)] for n in range(3)]
    assert torch.allclose(similarity_matrix(h), torch.tensor(by_hand(rows)), atol=1e-5)
    # 3 channels or fewer, or a 1-pixel map: the features are flattened instead
    small = torch.randn(3, 3, 2, 2, generator=gen)
    assert torch.allclose(similarity_matrix(small), torch.tensor(by_hand(small.flatten(1).tolist())), atol=1e-5)


def test_pooled_size_halves_until_the_features_fit():
    assert pooled_size((64, 32, 32), 4096) == (8, 8)
    assert pooled_size((16, 32, 32), 4096) == (16, 16)
    assert pooled_size((128, 8, 8), 4096) == (4, 8)
    assert pooled_size((2, 2, 2), 4096) == (2, 2)
    assert pooled_size((8192, 2, 2), 4096) == (1, 1)  # cannot go below one pixel


def spec(index=0, shape=(4, 4, 4)):
    return ModuleSpec(index, 3, 3, out_shape=shape)


def test_terms_are_beta_weighted_sim_and_pred_and_the_readout():
    torch.manual_seed(0)
    objective = create_objective("predsim", spec(), predsim_beta=0.9, predsim_dim=16, infopro_lambdas=[1, 1, 1, 1])
    assert isinstance(objective, PredSim) and objective.pool == (2, 2) and objective.detach_head
    assert objective.sim_conv.bias is None and torch.count_nonzero(objective.pred.weight) == 0
    h, y = torch.randn(6, 4, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.randn(6, 3)
    terms = objective(h, logits, y)
    assert list(terms) == ["sim", "pred", "readout"]
    sim = F.mse_loss(similarity_matrix(objective.sim_conv(h)), similarity_matrix(F.one_hot(y, 3)))
    assert torch.allclose(terms["sim"], 0.9 * sim)
    # the zero-initialised prediction layer outputs its bias whatever the features
    bias_ce = F.cross_entropy(objective.pred.bias.expand(6, 3), y)
    assert torch.allclose(terms["pred"], 0.1 * bias_ce)
    assert torch.equal(terms["readout"], F.cross_entropy(logits, y))


def test_last_module_is_plain_cross_entropy_with_no_modules():
    objective = create_objective("predsim", ModuleSpec(2, 3, 3))
    assert not objective.detach_head and list(objective.parameters()) == []
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert list(objective(None, logits, y)) == ["ce"]


def test_readout_sends_the_block_no_gradient():
    """The auxiliary net is trained on the detached output: its loss alone leaves the block's gradients empty,
    while the similarity term reaches the block."""
    torch.manual_seed(0)
    block, head = torch.nn.Conv2d(1, 4, 3, padding=1), LinearClassifier(4, 3)
    part = BlocksThenHead(block, head, objective=create_objective("predsim", spec()))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    _, _, terms = part(x, y)
    terms["readout"].backward(retain_graph=True)
    assert block.weight.grad is None and head.fc.weight.grad is not None
    terms["sim"].backward()
    assert block.weight.grad is not None and block.weight.grad.abs().sum() > 0


def test_missing_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="predsim needs the C x H x W output shape of module 1"):
        create_objective("predsim", ModuleSpec(0, 3, 10))
