"""Power-law exponent of weight spectra against heavy-tailed random matrices (and weightwatcher)."""

import contextlib
import io
import logging

import numpy as np
import pytest
import timm
import torch

import greedy.models  # noqa: F401  (registers greedy_digits_k2 with timm)
from greedy.analysis.spectrum import esd, fit_power_law, weight_alpha, weight_matrices


def _pareto_matrix(shape: tuple[int, ...], mu: float, seed: int) -> np.ndarray:
    """Entries with P(|x| > t) = t^(-mu) for t >= 1 and random signs (Martin & Mahoney's Pareto(mu))."""
    rng = np.random.default_rng(seed)
    return rng.random(shape) ** (-1.0 / mu) * rng.choice([-1.0, 1.0], size=shape)


@pytest.fixture(scope="module")
def matrices() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "pareto": _pareto_matrix((2000, 1000), mu=1.0, seed=0),
        "gauss": rng.standard_normal((2000, 1000)),
        "pareto_conv": _pareto_matrix((128, 64, 3, 3), mu=1.0, seed=2),
        "gauss_conv": rng.standard_normal((128, 64, 3, 3)),
    }


@pytest.fixture(scope="module")
def alphas(matrices: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: weight_alpha(w)["alpha"] for name, w in matrices.items()}


def test_pareto_mu1_gives_alpha_1_5(alphas: dict[str, float]) -> None:
    # heavy-tailed universality class: alpha = mu/2 + 1 = 1.5 for mu = 1
    assert alphas["pareto"] == pytest.approx(1.5, abs=0.15)
    assert alphas["pareto_conv"] == pytest.approx(1.5, abs=0.15)


def test_gaussian_matrix_gives_large_alpha(alphas: dict[str, float]) -> None:
    assert alphas["gauss"] > 6
    assert alphas["gauss_conv"] > 6


def test_mle_on_exact_power_law_samples() -> None:
    rng = np.random.default_rng(3)
    for alpha in (1.5, 2.5, 4.0):
        x = rng.random(5000) ** (-1.0 / (alpha - 1.0))  # p(x) ~ x^-alpha on [1, inf)
        res = fit_power_law(x)
        assert res["alpha"] == pytest.approx(alpha, abs=max(0.1, 4 * res["sigma"]))
        fixed = fit_power_law(x, xmin=1.0)
        assert fixed["n_tail"] == 5000 and fixed["alpha"] == pytest.approx(alpha, abs=4 * fixed["sigma"])


def test_esd_conventions() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((30, 50))
    ev = esd(torch.tensor(w))
    assert ev.shape == (30,) and np.allclose(ev, np.sort(np.linalg.eigvalsh(w @ w.T / 50)))
    conv = rng.standard_normal((8, 4, 3, 3))
    assert [m.shape for m in weight_matrices(conv)] == [(8, 4)] * 9
    assert esd(conv).shape == (9 * 4,) and esd(conv, conv="flatten").shape == (8,)
    flat = conv.reshape(8, -1)
    assert np.allclose(esd(conv, conv="flatten"), np.sort(np.linalg.eigvalsh(flat @ flat.T / 36)))


def _weightwatcher(model: torch.nn.Module):
    """weightwatcher's `analyze()` with its defaults, quietly: one row per layer it analyzes."""
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "SMALL N PL FIT" for small layers
        return weightwatcher.WeightWatcher(model=model).analyze()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_agrees_with_weightwatcher_on_large_random_matrices(matrices: dict[str, np.ndarray],
                                                            alphas: dict[str, float]) -> None:
    for name, w in matrices.items():
        if w.ndim == 2:
            layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        else:
            layer = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(w))
        details = _weightwatcher(torch.nn.Sequential(layer))
        assert alphas[name] == pytest.approx(float(details["alpha"].iloc[0]), abs=1e-3), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_agrees_with_weightwatcher_layer_by_layer_on_a_greedy_net(one_thread) -> None:
    """The paper's digits net (BatchNorm, k = 2), seeded: a 1-input-channel conv (9 eigenvalues), 10-class linear
    heads (10), hidden convs (576-1152); and a 3x5 linear layer (3 eigenvalues) that neither fits."""
    torch.manual_seed(0)
    net = timm.create_model("greedy_digits_k2")
    with torch.no_grad():  # away from the initialization: a few random steps' worth of structure in every layer
        for p in net.parameters():
            if p.dim() > 1:
                p.add_(0.3 * p.std() * torch.randn_like(p) ** 3)
    model = torch.nn.ModuleDict({"net": net, "tiny": torch.nn.Linear(5, 3)})
    details = _weightwatcher(model)
    theirs = {row["longname"]: float(row["alpha"]) for _, row in details.iterrows()}
    ours = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            try:
                ours[name] = weight_alpha(module.weight.detach())
            except ValueError as err:
                assert name == "tiny" and "fewer than 8 (weightwatcher's min_evals)" in str(err)
    assert set(ours) == set(theirs)  # the same layers: every conv and linear layer but the tiny one
    for name, fit in ours.items():
        assert fit["alpha"] == pytest.approx(theirs[name], abs=1e-3), name
        assert fit["small_n"] == (fit["n"] < 20)
    assert ours["net.blocks.0.conv"]["n"] == 9 and ours["net.heads.0.fc"]["n"] == 10
    assert ours["net.blocks.0.conv"]["small_n"] and not ours["net.blocks.1.conv"]["small_n"]
