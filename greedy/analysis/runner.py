"""Probe families run on a trained GreedyNet: `run_analysis(net, data, names, settings)` -> JSON-ready dict.

Every family returns {"settings": what produced it, "notes": how to read it, ...} and, for the layer-wise
families, "layers": one entry per probed layer ({"layer", "depth", "kind", values...}).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from greedy.analysis.anisotropy import noise_anisotropy
from greedy.analysis.chaos import ACTIVATIONS, activation, chi1_at_fixed_point, correlation_map, eoc_curve
from greedy.analysis.clustering import binned_entropy, nc1, scatter_traces, silhouette
from greedy.analysis.connectivity import has_batchnorm, linear_path, path_summary
from greedy.analysis.information import reduce_dim, sp_mutual_information, sp_mutual_information_noisy
from greedy.analysis.moments import LayerMoments, normalized_sensitivity
from greedy.analysis.probes import knn_accuracy, linear_probe
from greedy.analysis.regions import line_regions, relu_pattern_fn
from greedy.analysis.representations import (
    Layer,
    Representations,
    Sample,
    block_prefix,
    head_model,
    iter_layer_outputs,
    pool_map,
    probe_layers,
    representations,
    seeded_sample,
)
from greedy.analysis.robustness import noise_error_rates
from greedy.analysis.similarity import cka_matrix
from greedy.analysis.spectrum import WW_MIN_EVALS, WW_SMALL_N, weight_alpha
from greedy.datasets import DataBundle
from greedy.models import GreedyNet


@dataclass
class AnalysisSettings:
    """Every knob of the probes; defaults keep `--analysis all` on digits to seconds on two CPU cores."""

    samples: int = 1000  # seeded subset of the test set, and a same-size one of the train set
    pool: int = 2  # block outputs average-pooled to pool x pool (0: full map), as the paper's heads see them
    heads: bool = False  # also probe the hidden layers of every auxiliary head
    seed: int = 0
    batch_size: int = 256
    linear_c: float = 1.0  # inverse L2 strength of the logistic-regression probe
    linear_max_iter: int = 1000
    knn_k: int = 5
    n_bins: int = 8  # binned entropy: uniform bins per readout unit (30^3 cells would saturate at ln n)
    beta: float = 0.5  # information: std of the Gaussian noise added to every block output
    info_dim: int = 3  # information and binned entropy: PCA readout dimension
    info_samples: int = 500  # information: inputs used (first ones of the test subset)
    noisy_passes: int = 8  # information: noisy forward passes per input (samples of S_l given x)
    mc_samples: int = 2000  # information: Monte-Carlo draws for h(T)
    segments: int = 8  # regions: segments, each from a test input towards another one
    segment_fraction: float = 0.05  # regions: the first fraction of the way (short: boundaries are dense)
    segment_points: int = 1000  # regions: evenly spaced points per segment
    sigmas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # noise: std of the Gaussian input noise
    noise_samples: int = 16  # noise: draws per test input and sigma
    noise_heads: bool = False  # noise: also every trained intermediate head, not only the final model
    moments_samples: int = 256  # moments: test inputs propagated with their noise (the first ones of the subset)
    chaos_pairs: int = 64  # chaos: seeded pairs of test inputs whose correlation is propagated
    chaos_eoc_points: int = 21  # chaos: sigma_b values of the plotted edge-of-chaos curve
    threads: int = 1  # CPU threads (torch and BLAS) while probing: many small problems, threads mostly contend
    aniso_rank: int = 4  # anisotropy: top Hessian eigenpairs (Lanczos) in the low-rank Tr(H Sigma)
    aniso_samples: int = 128  # anisotropy: train inputs (the first of the train subset) for H and Sigma
    aniso_probes: int = 8  # anisotropy: Hutchinson probes for Tr(H)
    path_points: int = 11  # connectivity: evenly spaced alphas from 0 (run A) to 1 (run B)

    def pick(self, *keys: str) -> dict[str, Any]:
        """The named settings, plus the sampling ones every family shares."""
        common = ("samples", "pool", "heads", "seed")
        return {k: _plain(getattr(self, k)) for k in (*common, *keys)}


@dataclass
class Context:
    """What the families share: the net, its data subsets and (lazily) its representations."""

    net: GreedyNet
    data: DataBundle
    settings: AnalysisSettings
    trained_heads: list[int] = field(default_factory=list)  # 1-based heads that were trained
    init_net: GreedyNet | None = None  # the net the run started from (same config and seed), if known
    other: GreedyNet | None = None  # pairwise families: the run given with --compare (same architecture)
    other_heads: list[int] = field(default_factory=list)  # 1-based heads trained in the other run
    only: tuple[str, ...] | None = None  # probe only these layers (None: every layer)
    samples: tuple[Sample, Sample] | None = None  # (train, test) subsets drawn earlier, reused as they are

    @cached_property
    def train(self) -> Sample:
        if self.samples is not None:
            return self.samples[0]
        return seeded_sample(self.data.train, self.settings.samples, self.settings.seed)

    @cached_property
    def test(self) -> Sample:
        if self.samples is not None:
            return self.samples[1]
        return seeded_sample(self.data.test, self.settings.samples, self.settings.seed)

    @cached_property
    def reps(self) -> Representations:
        s = self.settings
        return representations(self.net, self.train, self.test, s.pool, heads=s.heads, batch_size=s.batch_size,
                               only=self.only)

    def layers(self, with_input: bool = True) -> list[Layer]:
        """Probed layers in order, the input first unless with_input is False (only those in `only`, if set)."""
        return [la for la in self.reps.layers
                if (with_input or la.kind != "input") and (self.only is None or la.name in self.only)]

    def nets(self) -> list[tuple[str, GreedyNet]]:
        """(key prefix, net): the trained net ("") and, when known, the net at initialization ("init_")."""
        return [("", self.net)] + ([("init_", self.init_net)] if self.init_net is not None else [])


def _plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    return list(value) if isinstance(value, tuple) else value


def _entry(layer: Layer, **values: Any) -> dict[str, Any]:
    """One per-layer result."""
    return {"layer": layer.name, "depth": layer.depth, "kind": layer.kind, **values}


# ---------------------------------------------------------------------------------------------------------------
# families on representations


def probe_linear(ctx: Context) -> dict[str, Any]:
    """Train/test accuracy of a logistic-regression probe per layer (Alain & Bengio 2016)."""
    s, r = ctx.settings, ctx.reps
    layers = []
    for layer in ctx.layers():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings: max_iter is recorded
            res = linear_probe(r.train[layer.name], r.y_train, r.test[layer.name], r.y_test, C=s.linear_c,
                               max_iter=s.linear_max_iter, seed=s.seed)
        layers.append(_entry(layer, **res, dim=int(r.test[layer.name].shape[1])))
    return {"settings": s.pick("linear_c", "linear_max_iter"), "layers": layers,
            "notes": "multinomial logistic regression on standardized pooled features, fit on the train subset"}


def probe_knn(ctx: Context) -> dict[str, Any]:
    """Test accuracy of a cosine k-nearest-neighbour classifier on the train subset, per layer."""
    s, r = ctx.settings, ctx.reps
    layers = [_entry(la, test_acc=knn_accuracy(r.train[la.name], r.y_train, r.test[la.name], r.y_test, k=s.knn_k))
              for la in ctx.layers()]
    return {"settings": s.pick("knn_k"), "layers": layers,
            "notes": "k-NN majority vote under cosine distance; references: the train subset"}


def probe_clustering(ctx: Context) -> dict[str, Any]:
    """Class clustering of the test subset per layer: Tr(S_W)/Tr(S_B), NC1 and silhouette."""
    r = ctx.reps
    layers = []
    for la in ctx.layers():
        x = r.test[la.name]
        traces = scatter_traces(x, r.y_test)
        layers.append(_entry(la, **traces, nc1=nc1(x, r.y_test), silhouette=silhouette(x, r.y_test)))
    return {"settings": ctx.settings.pick(), "layers": layers,
            "notes": "on the test subset; ratio = Tr(S_W)/Tr(S_B) and NC1 = Tr(S_W S_B^+)/K fall as classes "
                     "collapse; silhouette in [-1, 1] rises"}


def probe_binned_entropy(ctx: Context) -> dict[str, Any]:
    """H(Bin(T)) per layer: on the PCA readout used by `information`, and on the full pooled features."""
    s, r = ctx.settings, ctx.reps
    layers = []
    for la in ctx.layers(with_input=False):
        x = r.test[la.name]
        reduced = reduce_dim(x, s.info_dim, method="pca")
        layers.append(_entry(la, h_bin=binned_entropy(reduced, n_bins=s.n_bins),
                             h_bin_full=binned_entropy(x, n_bins=s.n_bins), dim=int(reduced.shape[1]),
                             dim_full=int(x.shape[1])))
    n = int(r.y_test.shape[0])
    return {"settings": s.pick("n_bins", "info_dim"), "layers": layers, "max_nats": math.log(n), "n": n,
            "notes": "nats; per-unit uniform bins over each unit's range on the test subset; at most ln n "
                     "(h_bin_full, on every pooled unit, is usually saturated there)"}


def probe_cka(ctx: Context) -> dict[str, Any]:
    """Linear CKA between every pair of layers on the test subset."""
    names = [la.name for la in ctx.layers()]
    matrix = cka_matrix([ctx.reps.test[n] for n in names])
    return {"settings": ctx.settings.pick(), "layers": [_entry(la) for la in ctx.layers()],
            "names": names, "matrix": matrix.tolist(), "notes": "linear CKA of pooled features (test subset)"}


# ---------------------------------------------------------------------------------------------------------------
# information in the noisy network


def _readout_scale(shape: Sequence[int], pool: int) -> tuple[float, bool]:
    """sqrt(cells per pooled value), which makes average pooling orthonormal; False if windows are uneven."""
    if len(shape) != 3 or pool <= 0 or (shape[1] <= pool and shape[2] <= pool):
        return 1.0, True
    h, w = shape[1], shape[2]
    ph, pw = min(pool, h), min(pool, w)
    even = h % ph == 0 and w % pw == 0
    return math.sqrt((h / ph) * (w / pw)), even


@contextmanager
def noisy_blocks(net: GreedyNet, beta: float, gen: torch.Generator, record: Callable[[str, torch.Tensor], None],
                 heads: bool = False):
    """Forward hooks: record every block output, then add N(0, beta^2 I); optionally record head layers."""
    def block_hook(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
            record(name, out)
            noise = torch.randn(out.shape, generator=gen, dtype=out.dtype)
            return out + beta * noise.to(out.device)
        return hook

    def head_hook(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            record(name, out)
        return hook

    handles = [b.register_forward_hook(block_hook(f"block{j + 1}")) for j, b in enumerate(net.blocks)]
    if heads:
        handles += [conv.register_forward_hook(head_hook(f"head{j + 1}.conv{i + 1}"))
                    for j, head in enumerate(net.heads) for i, conv in enumerate(getattr(head, "convs", []))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def noisy_passes(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[float]]:
    """R noisy passes: each layer's pre-noise readout (n x R x D, orthonormally pooled), and each head's accuracy.

    With `ctx.only` (and no head layers) the passes run the blocks up to the deepest probed one and no head (the
    accuracies are then an empty list): the noisy network up to that block is the same, at a fraction of the cost.
    """
    s, net = ctx.settings, ctx.net
    gen = torch.Generator().manual_seed(s.seed)
    device = next(net.parameters()).device
    outs: dict[str, list[torch.Tensor]] = {}  # per layer: batches of every pass, in pass-major order
    correct = torch.zeros(net.num_stages)
    depth = max(la.depth for la in ctx.layers(with_input=False)) if ctx.only is not None and not s.heads else None
    prefix = block_prefix(net, depth) if depth is not None else None

    def record(name: str, out: torch.Tensor) -> None:
        scale, _ = _readout_scale(out.shape[1:], s.pool)
        outs.setdefault(name, []).append(pool_map(out.float(), s.pool).cpu() * scale)

    with noisy_blocks(net, s.beta, gen, record, heads=s.heads):
        for _ in range(s.noisy_passes):
            for start in range(0, x.shape[0], s.batch_size):
                xb = x[start:start + s.batch_size].to(device)
                if prefix is not None:
                    prefix(xb)
                    continue
                yb = y[start:start + s.batch_size]
                correct += torch.stack([(lg.argmax(1).cpu() == yb).sum() for lg in net.forward_heads(xb)]).float()
    stacked = {name: torch.cat(parts).reshape(s.noisy_passes, x.shape[0], -1).transpose(0, 1)
               for name, parts in outs.items()}
    return stacked, [] if prefix is not None else (correct / (x.shape[0] * s.noisy_passes)).tolist()


def _pca_readout(s: torch.Tensor, d: int) -> torch.Tensor:
    """Project n x R x D samples on the top-d principal directions (orthonormal rows) of all n*R of them."""
    flat = s.reshape(-1, s.shape[-1]).double()
    centered = flat - flat.mean(dim=0, keepdim=True)
    if flat.shape[1] > d:
        _, vecs = torch.linalg.eigh(centered.T @ centered)  # ascending eigenvalues: the last d columns
        centered = centered @ vecs[:, -d:].flip(1)
    return centered.reshape(s.shape[0], s.shape[1], -1)


def probe_information(ctx: Context) -> dict[str, Any]:
    """SP estimate of I(X;T_l) in the noisy network (Goldfeld et al. 2019), on a low-dimensional readout."""
    s = ctx.settings
    n = min(s.info_samples, ctx.test.x.shape[0])
    samples, head_acc = noisy_passes(ctx, ctx.test.x[:n], ctx.test.y[:n])
    layers = []
    for la in ctx.layers(with_input=False):
        z = _pca_readout(samples[la.name], s.info_dim)
        deterministic = bool(torch.equal(z, z[:, :1].expand_as(z)))  # no noise upstream (the first block)
        if deterministic:
            res = sp_mutual_information(z[:, 0], s.beta, mc_samples=s.mc_samples, seed=s.seed)
        else:
            res = sp_mutual_information_noisy(z, s.beta, mc_samples=s.mc_samples, seed=s.seed)
        _, even = _readout_scale(ctx.reps.shapes[la.name], s.pool)
        layers.append(_entry(la, **res, deterministic_given_x=deterministic, orthonormal_readout=even))
    return {
        "settings": s.pick("beta", "info_dim", "info_samples", "noisy_passes", "mc_samples"),
        "layers": layers,
        "noisy_head_acc": [{"head": j + 1, "acc": acc, "trained": j + 1 in ctx.trained_heads}
                           for j, acc in enumerate(head_acc)],
        "max_nats": math.log(n),
        "notes": (
            "I(X;T_l) for T_l = R_l(S_l) + N(0, beta^2 I_d): S_l is block l's output in the network with "
            "N(0, beta^2 I) added to EVERY block output, R_l the orthonormal readout (sum-pool / sqrt(cells), "
            "then the top info_dim principal directions), so R_l(noise) is exactly N(0, beta^2 I_d) and the "
            "value lower-bounds I(X; noisy block output). h(T|X) is exact for the first block and SP-estimated "
            f"from noisy_passes samples after it. At most ln n = {math.log(n):.3f} nats. The estimator's error "
            "grows quickly (exponentially in sample complexity) with the dimension: compare values only at the "
            "same info_dim, beta and n. Head layers (with --analysis-heads) get the readout noise only. "
            "noisy_head_acc: test accuracy of every head in the noisy network."
        ),
    }


# ---------------------------------------------------------------------------------------------------------------
# families on the network itself


def _depth_patterns(net: GreedyNet, example: torch.Tensor) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """Pattern function of the net up to each block depth, sharing one forward pass of the full net per input."""
    full = relu_pattern_fn(block_prefix(net, net.num_stages))
    cols = {d: relu_pattern_fn(block_prefix(net, d))(example[None]).shape[1] for d in range(1, net.num_stages + 1)}
    cache: dict[bytes, torch.Tensor] = {}

    def for_depth(d: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def pattern(x: torch.Tensor) -> torch.Tensor:
            key = hashlib.blake2b(x.detach().cpu().numpy().tobytes(), digest_size=16).digest()
            if key not in cache:
                cache.clear()
                cache[key] = full(x)
            return cache[key][:, :cols[d]]
        return pattern

    return {d: for_depth(d) for d in cols}


def _segment_pairs(n: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` seeded pairs (i, j), i != j, of test-subset indices."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randperm(n, generator=gen)[:count].tolist()
    ends = [(i + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n for i in starts]
    return list(zip(starts, ends, strict=True))


def probe_regions(ctx: Context) -> dict[str, Any]:
    """Linear regions of the net up to each block along segments from test inputs (Hanin & Rolnick 2019)."""
    s, net, x = ctx.settings, ctx.net, ctx.test.x
    net.eval()
    patterns = _depth_patterns(net, x[0])
    per_depth: dict[int, list[dict[str, float]]] = {d: [] for d in patterns}
    for i, j in _segment_pairs(x.shape[0], min(s.segments, x.shape[0]), s.seed):
        x0, x1 = x[i], x[i] + s.segment_fraction * (x[j] - x[i])
        for d, fn in patterns.items():
            per_depth[d].append(line_regions(fn, x0, x1, n_points=s.segment_points))
    layers = [_entry(Layer(f"block{d}", d, "block"), **_mean_regions(rs, s.segment_points))
              for d, rs in per_depth.items()]
    return {"settings": s.pick("segments", "segment_fraction", "segment_points"), "layers": layers,
            "notes": "regions of the net up to block l (its ReLUs and all before) on segments from a test input "
                     "x_i towards x_j, the first segment_fraction of the way; counts are lower bounds when "
                     "points_per_region is small; mean_boundary_distance in input units, averaged over segments "
                     "with a boundary; max-pool switches are not counted"}


def _mean_regions(rs: list[dict[str, float]], n_points: int) -> dict[str, float]:
    """Average line_regions results over segments (boundary distance over segments that have a boundary)."""
    dists = [r["mean_boundary_distance"] for r in rs if math.isfinite(r["mean_boundary_distance"])]
    mean = lambda key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    return {
        "n_regions": mean("n_regions"),
        "regions_per_length": float(np.mean([r["n_regions"] / r["length"] for r in rs])),
        "regions_per_length_per_neuron": mean("regions_per_length_per_neuron"),
        "boundaries_per_length_per_neuron": mean("boundaries_per_length_per_neuron"),
        "mean_boundary_distance": float(np.mean(dists)) if dists else float("inf"),
        "segments_without_boundary": len(rs) - len(dists),
        "mean_length": mean("length"),
        "n_neurons": int(rs[0]["n_neurons"]),
        "min_points_per_region": float(n_points / max(r["n_regions"] for r in rs)),
    }


def _weight_modules(net: GreedyNet) -> list[tuple[str, str, int, nn.Module]]:
    """(name, part, 1-based depth, module) of every conv and linear layer of the blocks and heads."""
    found = []
    for part, modules in (("block", net.blocks), ("head", net.heads)):
        for j, module in enumerate(modules):
            for name, m in module.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    found.append((f"{part}s.{j}.{name}", part, j + 1, m))
    return sorted(found, key=lambda f: (f[2], f[1] != "block"))


def probe_spectrum(ctx: Context) -> dict[str, Any]:
    """Power-law exponent alpha of every conv/linear weight's ESD (Martin & Mahoney 2021), fitted as weightwatcher
    0.7.7's `analyze()` fits it; fits on fewer than WW_SMALL_N eigenvalues are flagged (`reliable: false`), layers
    with fewer than WW_MIN_EVALS are not fitted (weightwatcher skips them), and `mean_alpha` averages the reliable
    fits of trained layers only."""
    layers = []
    for name, part, depth, m in _weight_modules(ctx.net):
        entry = {"layer": name, "depth": depth, "kind": part, "shape": list(m.weight.shape),
                 "trained": part == "block" or depth in ctx.trained_heads}
        try:
            fit = weight_alpha(m.weight)
            entry.update({k: float(v) for k, v in fit.items() if k != "small_n"}, reliable=not fit["small_n"])
        except ValueError as err:
            entry.update(alpha=None, reliable=False, error=str(err))
        layers.append(entry)
    kept = [e["alpha"] for e in layers if e["reliable"] and e["trained"]]
    return {"settings": {"conv": "slices", "min_eigs_reliable": WW_SMALL_N, "min_eigs_fitted": WW_MIN_EVALS,
                         "fit": "weightwatcher 0.7.7 analyze() defaults"},
            "layers": layers, "mean_alpha": float(np.mean(kept)) if kept else None,
            "notes": f"ESD of W^T W / N, conv kernels as kh*kw slices pooled (weightwatcher's default); a fit on "
                     f"fewer than {WW_SMALL_N} eigenvalues (weightwatcher's small-N cutoff) means little: flagged "
                     f"reliable=false, drawn hollow and left out of mean_alpha; fewer than {WW_MIN_EVALS}: not "
                     "fitted; 2 < alpha < 6 is the range Martin & Mahoney associate with well-trained layers"}


def probe_noise(ctx: Context) -> dict[str, Any]:
    """Test error under Gaussian input noise and the implied distance to the error set (Ford et al. 2019)."""
    s, net = ctx.settings, ctx.net
    net.eval()
    last = net.num_stages
    heads = [d for d in ctx.trained_heads if d != last] if s.noise_heads else []
    device = next(net.parameters()).device
    models = []
    for d in [*heads, last]:
        res = noise_error_rates(head_model(net, d), ctx.test.x, ctx.test.y, s.sigmas, n_samples=s.noise_samples,
                                seed=s.seed, device=device)
        models.append({"model": "final" if d == last else f"head{d}", "depth": d,
                       "clean_error": float(1.0 - res["clean_correct"].mean()),
                       "mean_error": res["mean_error"].tolist(), "median_distance": res["median_distance"].tolist(),
                       "distance_from_mean_error": res["distance_from_mean_error"].tolist()})
    return {"settings": s.pick("sigmas", "noise_samples", "noise_heads"), "sigmas": list(s.sigmas),
            "models": models,
            "notes": "error of the model on x + N(0, sigma^2 I) (input units: normalized pixels); implied distance "
                     "d = -sigma Phi^-1(p): null where not finite (no error seen: beyond resolution; p >= 1/2: "
                     "undefined)"}


# ---------------------------------------------------------------------------------------------------------------
# signal propagation, at initialization and after training


def layer_moments(net: GreedyNet, x: torch.Tensor, layers: list[Layer], seed: int, batch_size: int = 256
                  ) -> dict[str, dict[str, float]]:
    """Labatie's moments of every layer's signal x^l and noise dx^l = J_l dx, dx ~ N(0, I) (a JVP per batch).

    x: N x C x H x W inputs. Returns layer name -> `LayerMoments.summary()` plus chi (relative to "input", which
    must be among `layers`). The noise powers are per unit input noise variance (the JVP is linear in dx).
    """
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    acc = {la.name: LayerMoments() for la in layers}
    net.eval()

    def outputs(inp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # cloned as produced: a later in-place activation (timm's ReLU(inplace=True)) must not change them
        return tuple(out.clone() for _, out in iter_layer_outputs(net, inp, layers))

    with torch.no_grad(), warnings.catch_warnings():
        # torch.func's first JVP scripts its decompositions with torch.jit.script, which warns that it is deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            dx = torch.randn(xb.shape, generator=gen).to(device=device, dtype=xb.dtype)
            outs, tangents = torch.func.jvp(outputs, (xb,), (dx,))
            for la, out, tangent in zip(layers, outs, tangents, strict=True):
                acc[la.name].add(out, tangent)
    res = {name: m.summary() for name, m in acc.items()}
    x0 = res["input"]
    for row in res.values():
        row["chi"] = normalized_sensitivity(row["signal_power"], row["noise_power"], x0["signal_power"],
                                            x0["noise_power"])
    return res


def probe_moments(ctx: Context) -> dict[str, Any]:
    """Signal and noise moments by depth, at initialization and trained (Labatie 2019): power, chi, r_eff."""
    s = ctx.settings
    layers = probe_layers(ctx.net, s.heads)
    n = min(s.moments_samples, ctx.test.x.shape[0])
    results = {prefix: layer_moments(net, ctx.test.x[:n], layers, s.seed, s.batch_size) for prefix, net in ctx.nets()}
    entries = [_entry(la, **{f"{prefix}{k}": v for prefix, res in results.items() for k, v in res[la.name].items()})
               for la in layers]
    return {"settings": {**s.pick("moments_samples"), "n": n, "init": ctx.init_net is not None},
            "layers": entries,
            "notes": "signal x^l and noise dx^l = J_l dx (forward-mode JVP, dx ~ N(0, I) in input units) on the first "
                     "n test inputs; a map is read as one channel vector per input and position (C values; the "
                     "input of a 1-channel image has r_eff 1 by construction); signal_power = mean channel variance "
                     "over inputs and positions, noise_power = E[dx^2]; chi = sqrt((noise/signal power) / (the "
                     "input's)): > 1 the net amplifies small input changes relative to the signal; r_eff = Tr C / "
                     "lambda_max(C) of the centered covariance: -> 1 a one-dimensional (pathological) signal; "
                     "init_*: the same on the net the run started from (its config and seed)"}


_ACTIVATION_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.ELU: "elu", nn.SELU: "selu",
                                        nn.SiLU: "silu", nn.GELU: "gelu", nn.Identity: "linear"}


def _plain_layer(block: nn.Module) -> tuple[nn.Module, nn.Module, str, bool] | None:
    """(weight layer, activation module, activation name, batchnorm) of a block that is one conv/linear layer
    followed by BatchNorm and an activation (a mean-field layer); None for others (residual blocks, several
    layers: no single-layer map)."""
    weights = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    acts = [m for m in block.modules() if type(m) in _ACTIVATION_MODULES and type(m) is not nn.Identity]
    if len(weights) != 1 or len(acts) != 1:
        return None
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    return weights[0], acts[0], _ACTIVATION_MODULES[type(acts[0])], bn


def sigma_w2_b2(m: nn.Module) -> tuple[float, float]:
    """Mean-field (sigma_w^2, sigma_b^2) of a conv/linear layer: fan_in x Var(W) (conv fan-in = in_channels /
    groups x kernel area) and Var(b), 0 without a bias."""
    w = m.weight.detach().double()
    fan_in = w[0].numel()
    sb2 = float(m.bias.detach().double().var(unbiased=False)) if m.bias is not None else 0.0
    return fan_in * float(w.var(unbiased=False)), sb2


def _pair_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: correlation <a, b> / (|a| |b|) over all units (flattened maps), and q = (|a|^2 + |b|^2) / (2 D)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    na, nb = (a * a).sum(1), (b * b).sum(1)
    return (a * b).sum(1) / (na * nb).sqrt().clamp(min=1e-300), (na + nb) / (2 * a.shape[1])


@torch.no_grad()
def correlation_propagation(net: GreedyNet, xa: torch.Tensor, xb: torch.Tensor) -> list[dict[str, Any]]:
    """Measured pre-activation correlation of input pairs (xa[i], xb[i]) by block, and its one-step mean-field
    prediction from the layer before (Poole et al. 2016): c_pred^l = C_l(c^{l-1}; q^{l-1}) with block l's
    (sigma_w^2, sigma_b^2) and the previous layer's activation (identity on the input).

    Returns one dict per depth (0: the input): c (mean over pairs), q, and for plain blocks activation,
    sigma_w2, sigma_b2, batchnorm, q_star, chi1 (at the layer's own fixed point), c_pred.
    """
    net.eval()
    device = next(net.parameters()).device
    captured: dict[int, list[torch.Tensor]] = {}
    handles, plain = [], {}
    for j, block in enumerate(net.blocks):
        found = _plain_layer(block)
        if found is not None:
            plain[j + 1] = found
            handles.append(found[1].register_forward_pre_hook(
                lambda _m, inp, d=j + 1: captured.setdefault(d, []).append(inp[0].to("cpu", copy=True))))
    try:
        for x in (xa, xb):
            net.forward_blocks(x.to(device))
    finally:
        for h in handles:
            h.remove()
    rows = []
    c_prev, q_prev = _pair_stats(xa, xb)
    phi_prev = activation("linear")[0]
    rows.append({"depth": 0, "c": float(c_prev.mean()), "q": float(q_prev.mean())})
    for d in range(1, net.num_stages + 1):
        if d not in plain:
            rows.append({"depth": d, "c": None, "q": None})
            c_prev = None
            continue
        weight, _, act, bn = plain[d]
        sw2, sb2 = sigma_w2_b2(weight)
        c, q = _pair_stats(*captured[d])
        pred = None
        if c_prev is not None:
            pred = float(np.mean([correlation_map(float(ci), float(qi), phi_prev, sw2, sb2)
                                  for ci, qi in zip(c_prev, q_prev, strict=True)]))
        q_star, chi1 = chi1_at_fixed_point(act, sw2, sb2)
        rows.append({"depth": d, "c": float(c.mean()), "q": float(q.mean()), "c_pred": pred, "activation": act,
                     "sigma_w2": sw2, "sigma_b2": sb2, "batchnorm": bn, "q_star": q_star, "chi1": chi1})
        c_prev, q_prev, phi_prev = c, q, activation(act)[0]
    return rows


def probe_chaos(ctx: Context) -> dict[str, Any]:
    """Edge of chaos (Hayou et al. 2019; Poole et al. 2016): each block's (sigma_b, sigma_w) and chi_1, and the
    measured propagation of input-pair correlations against the mean-field map, at initialization and trained."""
    s, x = ctx.settings, ctx.test.x
    pairs = _segment_pairs(x.shape[0], min(s.chaos_pairs, x.shape[0]), s.seed)
    xa, xb = x[[i for i, _ in pairs]], x[[j for _, j in pairs]]
    results = {prefix: correlation_propagation(net, xa, xb) for prefix, net in ctx.nets()}
    layers = []
    for d in range(len(results[""])):
        la = Layer("input", 0, "input") if d == 0 else Layer(f"block{d}", d, "block")
        layers.append(_entry(la, **{f"{prefix}{k}": v for prefix, res in results.items()
                                    for k, v in res[d].items() if k != "depth"}))
    acts = sorted({e[k] for e in layers for k in ("activation", "init_activation") if e.get(k)})
    sbs = [e[k] for e in layers for k in ("sigma_b2", "init_sigma_b2") if e.get(k) is not None]
    grid = np.linspace(0.0, max(1.0, 1.2 * math.sqrt(max(sbs, default=0.0))), s.chaos_eoc_points)
    eoc = {a: {"sigma_b": grid.tolist(), "sigma_w": eoc_curve(a, grid)} for a in acts if a in ACTIVATIONS}
    return {"settings": {**s.pick("chaos_pairs", "chaos_eoc_points"), "pairs": len(pairs),
                         "init": ctx.init_net is not None},
            "layers": layers, "eoc": eoc,
            "notes": "per block: sigma_w2 = fan_in x Var(W), sigma_b2 = Var(b) (0 without a bias, as under "
                     "BatchNorm), chi1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at the layer's own variance fixed point "
                     "(< 1 ordered, > 1 chaotic, = 1 edge of chaos; null where q* is infinite); c = mean "
                     "correlation over input pairs of the pre-activations (the input of the block's activation, "
                     "whole maps flattened), c_pred = the mean-field correlation map applied to the layer before's "
                     "measured (q, c). BatchNorm renormalizes every channel's variance (q is set by BN, not by the "
                     "variance map) and centers over the batch, which the map does not model: with BN, c_pred is "
                     "the map's shape at the measured q only. Residual or multi-layer blocks get no map (null). "
                     "init_*: the net the run started from"}


# the loss landscape: SGD noise at the trained weights, and the path between two runs


def _stage_views(ctx: Context) -> list[tuple[str, int, nn.Module, torch.Tensor, list[str] | None]]:
    """(view, depth, model, its inputs, its parameter names or None for all) of each trained problem.

    A greedy or decoupled run trained every stage j: block j + head j on the frozen prefix's outputs (computed
    once here). An e2e run trained one problem, the whole net, so it has no stage views. Every run gets the
    whole-net view: all blocks and the final head on the inputs (the e2e problem).
    """
    net, s = ctx.net, ctx.settings
    x = ctx.train.x[: s.aniso_samples]
    device = next(net.parameters()).device
    views = []
    for d in ctx.trained_heads if len(ctx.trained_heads) > 1 else []:
        with torch.no_grad():
            feats = torch.cat([net.prefix(d - 1)(x[i:i + s.batch_size].to(device))
                               for i in range(0, x.shape[0], s.batch_size)])
        views.append((f"stage{d}", d, nn.Sequential(net.blocks[d - 1], net.heads[d - 1]), feats, None))
    last = net.num_stages
    names = [n for n, _ in net.named_parameters() if n.startswith(("stem.", "blocks.", f"heads.{last - 1}."))]
    views.append(("net", last, net, x, names))
    return views


def probe_anisotropy(ctx: Context) -> dict[str, Any]:
    """Tr(H Sigma) of the SGD noise against its isotropic equivalent Tr(H) Tr(Sigma) / D (Zhu et al. 2019), for
    every trained stage and the whole net; cross-entropy without weight decay, BatchNorm in eval mode."""
    s = ctx.settings
    ctx.net.eval()
    y = ctx.train.y[: s.aniso_samples]
    layers = []
    for view, depth, model, x, params in _stage_views(ctx):
        res = noise_anisotropy(model, x, y, rank=s.aniso_rank, probes=s.aniso_probes, seed=s.seed, params=params,
                               batch_size=s.batch_size)
        kind = "net" if view == "net" else "stage"
        layers.append({"layer": view, "depth": depth, "kind": kind, **res})
    return {
        "settings": s.pick("aniso_rank", "aniso_samples", "aniso_probes", "batch_size"), "layers": layers,
        "notes": (
            "views: stage j = block j + head j on the frozen prefix's outputs (trained stages of a greedy or "
            "decoupled run), net = all blocks + the final head on the inputs. H: Hessian of the mean "
            "cross-entropy (weight decay left out: it adds weight_decay * I) on the first aniso_samples inputs of "
            "the train subset, BatchNorm in eval mode (running statistics; so each sample's gradient is defined); "
            "Sigma: covariance (1/n) of the per-sample gradients there (SGD with batch B has Sigma / B: the ratio "
            "is the same). tr_h_sigma = sum over the top aniso_rank eigenpairs of lambda_i u_i^T Sigma u_i: a lower "
            "bound of Tr(H Sigma) if H is PSD on the rest (top_fraction = their share of Tr(H)); tr_h_sigma_iso = "
            "Tr(H) Tr(Sigma) / D; ratio 1 is isotropic noise, larger means noise along the sharp directions. "
            "Tr(H) by deflated Hutchinson (trace_h_stderr); mean_grad_sq = ||mean gradient||^2 (0 at a minimum)"
        ),
    }


class _Heads(nn.Module):
    """A GreedyNet whose forward gives every head's logits (BatchNorm recomputation passes through all heads)."""

    def __init__(self, net: GreedyNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_heads(x)


def probe_connectivity(ctx: Context) -> dict[str, Any]:
    """Train loss and test accuracy along the straight line from this run (alpha 0) to the compared one (alpha 1),
    and the barrier height, for the final head and every head trained in both runs (Nguyen et al. 2019)."""
    s, net = ctx.settings, ctx.net
    settings = s.pick("path_points")
    if ctx.other is None:
        return {"settings": settings, "skipped": True,
                "notes": "needs two runs of one architecture: evaluate.py RUN --compare OTHER --analysis connectivity"}
    device = next(net.parameters()).device
    heads = sorted(set(ctx.trained_heads) & set(ctx.other_heads) | {net.num_stages})
    batches = lambda x: [x[i:i + s.batch_size].to(device) for i in range(0, x.shape[0], s.batch_size)]  # noqa: E731
    train_x, test_x = batches(ctx.train.x), batches(ctx.test.x)
    train_y, test_y = batches(ctx.train.y), batches(ctx.test.y)

    @torch.no_grad()
    def evaluate(model: GreedyNet) -> dict[str, float]:
        sums = torch.zeros(2, len(heads), dtype=torch.float64)
        for xs, ys, row in ((train_x, train_y, 0), (test_x, test_y, 1)):
            for xb, yb in zip(xs, ys, strict=True):
                logits = model.forward_heads(xb)
                for i, d in enumerate(heads):
                    lg = logits[d - 1].float()
                    sums[row, i] += (F.cross_entropy(lg, yb, reduction="sum") if row == 0
                                     else (lg.argmax(1) == yb).sum()).double().cpu()
        loss, acc = sums[0] / ctx.train.y.shape[0], sums[1] / ctx.test.y.shape[0]
        return {**{f"train_loss{d}": float(v) for d, v in zip(heads, loss, strict=True)},
                **{f"test_acc{d}": float(v) for d, v in zip(heads, acc, strict=True)}}

    stored = [evaluate(m.eval()) for m in (net, ctx.other)]  # the endpoints with their own BatchNorm statistics
    alphas = np.linspace(0.0, 1.0, s.path_points).tolist()
    curves = linear_path(net, net.state_dict(), ctx.other.state_dict(), alphas, evaluate,
                         bn_inputs=train_x if has_batchnorm(net) else None, forward=_Heads)
    paths = []
    for d in heads:
        loss, acc = curves[f"train_loss{d}"], curves[f"test_acc{d}"]
        error = {"alpha": alphas, "test_error": [1.0 - a for a in acc]}
        paths.append({"model": "final" if d == net.num_stages else f"head{d}", "depth": d, "train_loss": loss,
                      "test_acc": acc, **path_summary({"alpha": alphas, "train_loss": loss}, ["train_loss"]),
                      **path_summary(error, ["test_error"]),
                      "stored_bn_train_loss": [e[f"train_loss{d}"] for e in stored],
                      "stored_bn_test_acc": [e[f"test_acc{d}"] for e in stored]})
    return {
        "settings": settings, "alphas": alphas, "paths": paths, "bn_recomputed": has_batchnorm(net),
        "notes": (
            "theta(a) = (1 - a) theta_A + a theta_B, A = this run, B = the compared one; final: all blocks and the "
            "last head (the assembled net); headJ: blocks 1..J and head J interpolated (the auxiliary problem of "
            "stage J), for heads trained in both runs. train_loss: cross-entropy on the train subset; test_acc on "
            "the test subset. Barrier = max_a [v(a) - ((1 - a) v(0) + a v(1))] >= 0 (0: no rise above the chord). "
            "BatchNorm running statistics are not interpolated: they are recomputed at every point, endpoints "
            "included, from the train subset (train-mode passes, cumulative average; update_bn); "
            "stored_bn_*: the endpoints A, B with their own running statistics, for reference"
        ),
    }


FAMILIES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "linear": probe_linear,
    "knn": probe_knn,
    "clustering": probe_clustering,
    "binned_entropy": probe_binned_entropy,
    "information": probe_information,
    "cka": probe_cka,
    "regions": probe_regions,
    "spectrum": probe_spectrum,
    "noise": probe_noise,
    "moments": probe_moments,
    "chaos": probe_chaos,
    "anisotropy": probe_anisotropy,
    "connectivity": probe_connectivity,
}
PAIRWISE = ("connectivity",)  # families of two runs: computed once, in run A's results, with --compare


@contextmanager
def cpu_threads(n: int):
    """Run with n torch intra-op and BLAS threads, restoring torch's count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def run_analysis(net: GreedyNet, data: DataBundle, names: Sequence[str], settings: AnalysisSettings | None = None,
                 trained_heads: Sequence[int] | None = None, timings: dict[str, float] | None = None,
                 init_net: GreedyNet | None = None, other: GreedyNet | None = None,
                 other_heads: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the named probe families on `net` (eval mode); trained_heads are 1-based (None: all heads); `init_net`,
    the net the run started from, adds the init_* values of the moments and chaos families; `other` (with its
    trained `other_heads`, None: all) is the second run the PAIRWISE families need.

    Returns {"samples": ..., "layers": ..., family: result, ...}; per-family seconds go into `timings`.
    """
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {unknown}; choose from {', '.join(FAMILIES)}")
    settings = settings or AnalysisSettings()
    net.eval()
    heads = list(trained_heads) if trained_heads is not None else list(range(1, net.num_stages + 1))
    if init_net is not None:
        init_net.eval()
    ctx = Context(net, data, settings, heads, init_net)
    if other is not None:
        ctx.other = other
        ctx.other_heads = list(other_heads) if other_heads is not None else list(range(1, other.num_stages + 1))
    out: dict[str, Any] = {"samples": _sample_info(ctx)}
    with cpu_threads(settings.threads):
        for name in names:
            t0 = time.perf_counter()
            out[name] = FAMILIES[name](ctx)
            if timings is not None:
                timings[name] = time.perf_counter() - t0
    if "reps" in ctx.__dict__:
        out["layers"] = [{**asdict(la), "shape": ctx.reps.shapes.get(la.name)} for la in ctx.reps.layers]
    return out


def _sample_info(ctx: Context) -> dict[str, Any]:
    """Sizes and a digest of the seeded subsets (for checking that two analyses saw the same inputs)."""
    def digest(sample: Sample) -> str:
        return hashlib.sha1(np.asarray(sample.indices, dtype=np.int64).tobytes()).hexdigest()[:16]

    return {"train": len(ctx.train.indices), "test": len(ctx.test.indices), "seed": ctx.settings.seed,
            "train_indices_sha1": digest(ctx.train), "test_indices_sha1": digest(ctx.test)}


def compare_cka(net_a: GreedyNet, net_b: GreedyNet, data: DataBundle, settings: AnalysisSettings) -> dict[str, Any]:
    """Linear CKA between every layer of net A and every layer of net B on the same test inputs."""
    reps = [Context(n, data, settings).reps for n in (net_a, net_b)]
    matrix = cka_matrix([reps[0].test[n] for n in reps[0].names], [reps[1].test[n] for n in reps[1].names])
    same = [{"layer": n, "cka": float(matrix[i, reps[1].names.index(n)])}
            for i, n in enumerate(reps[0].names) if n in reps[1].names]
    return {"settings": settings.pick(), "names_a": reps[0].names, "names_b": reps[1].names,
            "matrix": matrix.tolist(), "same_layer": same,
            "notes": "rows: layers of run A, columns: layers of run B, same test subset"}
