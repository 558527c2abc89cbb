"""The InfoPro grid's configs (configs/infopro/): each builds, and its modules end where InfoPro's do."""

from pathlib import Path

import pytest

import train
from greedy.config import build_config, load_yaml
from greedy.models import check_shapes

ROOT = Path(__file__).resolve().parents[1]

# InfoPro's code (networks/configs.py), [stage, block] after which a module ends: stage 0 the stem conv, stages 1-3
# the residual stages, blocks 0-based.
INFOPRO_SPLITS = {
    "resnet32_k2": [[2, 1]],
    "resnet32_k4": [[1, 2], [2, 1], [3, 0]],
    "resnet32_k8": [[1, 0], [1, 2], [1, 4], [2, 1], [2, 3], [3, 0], [3, 2]],
    "resnet32_k16": [[0, 0], *[[1, b] for b in range(5)], *[[2, b] for b in range(5)], *[[3, b] for b in range(4)]],
    "resnet110_k2": [[2, 8]],
    "resnet110_k4": [[1, 11], [2, 7], [3, 3]],
    "resnet110_k8": [[1, 4], [1, 11], [2, 0], [2, 7], [2, 14], [3, 3], [3, 10]],
    "resnet110_k16": [[1, 1], [1, 4], [1, 7], [1, 10], [1, 13], [1, 16], [2, 1], [2, 4], [2, 7], [2, 11], [2, 15],
                      [3, 1], [3, 5], [3, 9], [3, 13]],
}
# (first lambda1, lambda2, last lambda1, lambda2), contrast mode: InfoPro's grid
LAMBDAS = {"resnet32_k2": [5, 1, 0, 0], "resnet32_k4": [6, 0, 1, 2], "resnet32_k8": [5, 0, 0, 2],
           "resnet32_k16": [5, 0.05, 0.2, 0.5], "resnet110_k2": [5, 0.5, 0, 0], "resnet110_k4": [1, 0, 0, 1],
           "resnet110_k8": [5, 0, 0, 1], "resnet110_k16": [5, 0, 0.5, 1]}


def test_the_grid_has_one_config_per_cell():
    assert sorted(p.stem for p in (ROOT / "configs" / "infopro").glob("*.yaml")) == sorted(INFOPRO_SPLITS)


@pytest.mark.parametrize("cell", sorted(INFOPRO_SPLITS))
def test_modules_end_where_infopro_ends_them(cell):
    cfg = build_config(load_yaml(ROOT / "configs" / "infopro" / f"{cell}.yaml"), check_data=False)
    net = check_shapes(cfg, 3, 32, 10)
    ends = [units[-1] for units in net.module_units[:-1]]
    expected = ["stem" if stage == 0 else f"stage{stage}_block{block + 1}" for stage, block in INFOPRO_SPLITS[cell]]
    assert ends == expected
    assert net.num_stages == int(cell.rsplit("_k", 1)[1]) and net.module_units[-1][-1] == "stage3_block" + (
        "5" if cell.startswith("resnet32") else "18")
    assert cfg.infopro_lambdas == LAMBDAS[cell] and cfg.objective == "infopro_contrast" and cfg.mode == "decoupled"
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.weight_decay) == (1024, 0.8, 160, 10, 1e-4)


def test_print_model_shows_each_modules_objective_parameters(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert train.main(["-c", "configs/infopro/resnet32_k4.yaml", "--print-model"]) == 0
    out = capsys.readouterr().out
    assert "objective infopro_contrast" in out and "objective_params" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    # module 1 (16 x 32 x 32 out, RGB in): decoder 16*12*9+12 + 24 (BN) + 12*3*9+3 = 2,091; task head 16*32*9
    # + 64 (BN) + 32*128+128 + 128*128+128 = 25,408; the last module trains the net's classifier: none
    assert rows[0][-2] == "27,499" and rows[-1][-2] == "0"


# MAN's code (networks/config.py), ResNet-110 at K = 32: [stage, block] after which a module ends (the last, [3, 17],
# left out as above)
MAN_RESNET110_K32 = [[1, 1], [1, 2], [1, 4], [1, 5], [1, 7], [1, 9], [1, 11], [1, 13], [1, 14], [1, 16], [1, 17],
                     [2, 1], [2, 2], [2, 4], [2, 5], [2, 7], [2, 9], [2, 11], [2, 13], [2, 14], [2, 16], [2, 17],
                     [3, 1], [3, 3], [3, 4], [3, 6], [3, 7], [3, 9], [3, 11], [3, 13], [3, 15]]
GRID = ["resnet32_k2", "resnet32_k4", "resnet32_k8", "resnet32_k16", "resnet110_k2", "resnet110_k4", "resnet110_k8",
        "resnet110_k16", "resnet110_k32", "resnet110_k55"]


def _blocks(cell: str, stem: bool) -> list[list[int]]:
    n = 5 if cell.startswith("resnet32") else 18
    return ([[0, 0]] if stem else []) + [[stage, block] for stage in (1, 2, 3) for block in range(n)]


def _expected_ends(method: str, cell: str) -> list[list[int]]:
    """Where each paper's own code ends the modules of this cell (all but the last)."""
    k, d = int(cell.rsplit("_k", 1)[1]), 2 if cell.startswith("resnet32") else 3
    if method == "auglocal" and cell in ("resnet32_k16", "resnet110_k55"):
        return _blocks(cell, stem=True)[:k - d - 1]  # AugLocal's train.py: K - d modules, net_config[:K - d - 1]
    if method == "man" and cell in ("resnet32_k16", "resnet110_k55"):
        return _blocks(cell, stem=False)[:-1]  # one module per residual block, the stem merged into the first
    return MAN_RESNET110_K32 if cell == "resnet110_k32" else INFOPRO_SPLITS[cell]


@pytest.mark.parametrize("method", ["auglocal", "man"])
def test_the_auglocal_and_man_grids_have_one_config_per_cell(method):
    assert sorted(p.stem for p in (ROOT / "configs" / method).glob("*.yaml")) == sorted(GRID)


@pytest.mark.parametrize("method", ["auglocal", "man"])
@pytest.mark.parametrize("cell", GRID)
def test_auglocal_and_man_cells_split_as_their_papers_code(method, cell):
    cfg = build_config(load_yaml(ROOT / "configs" / method / f"{cell}.yaml"), check_data=False)
    net = check_shapes(cfg, 3, 32, 10)
    ends = [units[-1] for units in net.module_units[:-1]]
    expected = ["stem" if stage == 0 else f"stage{stage}_block{block + 1}"
                for stage, block in _expected_ends(method, cell)]
    assert ends == expected and net.num_stages == len(expected) + 1
    assert cfg.objective == method and cfg.mode == "decoupled" and cfg.sched == "cosine"
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.momentum) == (
        1024, 0.8, 400, 10, 1e-4, 0.9)
    if method == "auglocal":  # run.sh: d = 2 for ResNet-32, 3 for ResNet-110, the pyramid with tau = 0.5
        assert (cfg.auglocal_depth, cfg.auglocal_tau) == (2 if cell.startswith("resnet32") else 3, 0.5)
    else:  # MAN's README command: InfoPro softmax, lambdas 5, 0.5 -> 0, 0, m = 0.995
        assert (cfg.man_base, cfg.man_momentum, cfg.infopro_lambdas) == ("infopro_ce", 0.995, [5, 0.5, 0, 0])
