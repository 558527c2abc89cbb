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
from threadpoolctl import threadpool_limits
from torch import nn

from greedy.analysis.clustering import binned_entropy, nc1, scatter_traces, silhouette
from greedy.analysis.information import reduce_dim, sp_mutual_information, sp_mutual_information_noisy
from greedy.analysis.probes import knn_accuracy, linear_probe
from greedy.analysis.regions import line_regions, relu_pattern_fn
from greedy.analysis.representations import (
    Layer,
    Representations,
    Sample,
    block_prefix,
    head_model,
    pool_map,
    representations,
    seeded_sample,
)
from greedy.analysis.robustness import noise_error_rates
from greedy.analysis.similarity import cka_matrix
from greedy.analysis.spectrum import WW_MIN_EVALS, WW_SMALL_N, weight_alpha
from greedy.data import DataBundle
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
    threads: int = 1  # CPU threads (torch and BLAS) while probing: many small problems, threads mostly contend

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
}


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
                 trained_heads: Sequence[int] | None = None, timings: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    """Run the named probe families on `net` (eval mode); trained_heads are 1-based (None: all heads).

    Returns {"samples": ..., "layers": ..., family: result, ...}; per-family seconds go into `timings`.
    """
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {unknown}; choose from {', '.join(FAMILIES)}")
    settings = settings or AnalysisSettings()
    net.eval()
    heads = list(trained_heads) if trained_heads is not None else list(range(1, net.num_stages + 1))
    ctx = Context(net, data, settings, heads)
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
