"""AugLocal (Ma et al., ICLR 2024): its pyramid depths and sampled units against the paper's rule worked by hand, its
auxiliary nets built from the net's own later units (a CIFAR ResNet-32 and a timm resnet18), trained."""

import pytest
import torch

from greedy.builder import GreedyBuilder
from greedy.config import build_config, load_yaml
from greedy.models import check_shapes, create_greedy_net
from greedy.objectives.auglocal import adapter, pyramid_depths, sampled_units

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET32_K16 = "configs/infopro/resnet32_k16.yaml"  # one module per unit but the last two: AugLocal's K = 16 split


def test_pyramid_depths_by_hand():
    # d (1 - r) + r with r = tau i / (K - 2); Python's round takes halves to the even integer
    assert pyramid_depths(2, 0.5, 16) == [2] * 15  # 2 - r, r <= 0.5: 1.5 rounds to 2
    assert pyramid_depths(3, 0.5, 55) == [3] * 27 + [2] * 27  # 3 - 2r: 2.509 at i = 26, 2.491 at i = 27
    assert pyramid_depths(4, 1.0, 5) == [4, 3, 2, 1]
    assert pyramid_depths(3, 0.0, 4) == [3, 3, 3]
    assert pyramid_depths(3, 0.5, 2) == [3]  # K = 2: one module, r = 0
    with pytest.raises(ValueError, match="K >= 2"):
        pyramid_depths(2, 0.5, 1)


def test_sampled_units_of_resnet32_at_k16_by_hand():
    """Module j ends at unit j of 16 (the stem, then 15 residual blocks): round(j + (15 - j) / 2) and unit 15, or
    every later unit when 2 or fewer are left."""
    expected = [[8, 15], [8, 15], [8, 15], [9, 15], [10, 15], [10, 15], [10, 15], [11, 15], [12, 15], [12, 15],
                [12, 15], [13, 15], [14, 15], [14, 15], [15]]
    assert [sampled_units(j, 16, 2) for j in range(15)] == expected


def test_resnet32_k16_auxiliary_nets_copy_the_sampled_units():
    cfg = build_config({**load_yaml(RESNET32_K16), "objective": "auglocal"}, check_data=False)
    net = check_shapes(cfg, 3, 32, 10)  # on the meta device: no memory
    builder = GreedyBuilder.for_config(cfg, net, (3, 32, 32))
    names = [name for names in net.module_units for name in names]
    expected = [[8, 15], [8, 15], [8, 15], [9, 15], [10, 15], [10, 15], [10, 15], [11, 15], [12, 15], [12, 15],
                [12, 15], [13, 15], [14, 15], [14, 15], [15]]
    assert [o.sampled for o in builder.objectives[:-1]] == [[names[i] for i in units] for units in expected]
    assert names[8] == "stage2_block3" and names[15] == "stage3_block5"
    assert not hasattr(builder.objectives[-1], "aux_net")  # the last module trains the net's classifier
    first = builder.objectives[0].aux_net
    # module 1 ends on the stem (16 x 32 x 32); stage2_block3 takes 32 x 16 x 16, stage3_block5 64 x 8 x 8: each
    # behind a stride-2 projection; then pooling and a linear classifier on 64 features
    kinds = [type(m).__name__ for m in first]
    assert kinds == ["Sequential", "BasicBlock", "Sequential", "BasicBlock", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert first[0][0].stride == (2, 2) and first[0][0].out_channels == 32 and first[6].in_features == 64
    # module 14 ends on stage3_block3 (64 x 8 x 8): its units take that shape, no projection
    assert [type(m).__name__ for m in builder.objectives[13].aux_net][:2] == ["BasicBlock", "BasicBlock"]


def test_adapter_pools_then_halves_and_refuses_to_grow():
    layers = adapter((16, 32, 32), (64, 8, 8))
    assert type(layers[0]).__name__ == "AdaptiveAvgPool2d" and layers[1].stride == (2, 2)
    assert layers(torch.zeros(2, 16, 32, 32)).shape == (2, 64, 8, 8)
    assert adapter((16, 8, 8), (32, 8, 8))[0].stride == (1, 1)
    with pytest.raises(ValueError, match="more pixels"):
        adapter((16, 8, 8), (16, 16, 16))


def test_timm_resnet18_auxiliary_net_is_built_from_its_layers_and_trains():
    cfg = build_config({**load_yaml("configs/digits_timm_resnet.yaml"), "model": "resnet18", "num_modules": 4,
                        "objective": "auglocal"}, check_data=False)
    torch.manual_seed(0)
    net = create_greedy_net(cfg, num_classes=10, in_chans=3, img_size=32)
    builder = GreedyBuilder.for_config(cfg, net, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    objective = builder.objectives[0]
    later = {name for names in net.module_units[1:] for name in names}
    assert objective.sampled and set(objective.sampled) <= later
    copies = [m for m in objective.aux_net if type(m).__name__ == "BasicBlock"]
    assert len(copies) == len(objective.sampled) == 2  # d = 2 (the default) at the first module
    originals = dict(zip([n for ns in net.module_units for n in ns], net.units(), strict=True))
    for name, copy in zip(objective.sampled, copies, strict=True):  # the unit's structure with new weights
        original = originals[name]
        assert [p.shape for p in copy.parameters()] == [p.shape for p in original.parameters()]
        assert not all(torch.equal(a, b) for a, b in zip(copy.parameters(), original.parameters(), strict=True))
    stage = builder.stage(0)
    part = stage.trainable
    optimizer = torch.optim.Adam(part.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    losses = []
    for _ in range(15):
        _, _, terms = part(stage.prefix(x), y)
        loss = sum(terms.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(terms["aug"].item())
    assert list(terms) == ["aug", "readout"]
    assert losses[-1] < 0.5 * losses[0], losses  # it fits 16 images: about 2.3 -> below 0.2 here
