"""Mutual information I(X;T) in noisy networks by sample propagation (SP; Goldfeld et al., ICML 2019).

A noisy layer outputs T = S + Z with S = f(T_prev) and Z ~ N(0, beta^2 I_d) independent. With S taking
the n sampled values s_1..s_n (equally weighted), T is the Gaussian mixture g = (1/n) sum_i N(s_i, beta^2 I)
and I(X;T) = h(T) - h(T|X). When S is a deterministic function of X (the first noisy layer, or a clean
network with noise added to the probed layer), h(T|X) = d/2 ln(2 pi e beta^2) exactly.

h(g) is estimated by Monte Carlo: t = s_i + beta z drawn with every component used equally often, and
h = mean(-ln g(t)) with ln g computed by logsumexp. Writing ||t - s_i||^2 = beta^2 ||z||^2, the term
||z||^2/2 in -ln g(t) has known mean d/2; it is replaced by that mean (a zero-mean control variate), which
leaves the estimator unbiased, removes most of its variance, and bounds the mixture part in [0, ln n]:

    h(g) = d/2 ln(2 pi e beta^2) + ln n - E[ln sum_j exp(-(||t - s_j||^2 - ||t - s_i||^2) / (2 beta^2))].

The error of SP grows quickly with d (the sample complexity is exponential in d), so layers are reduced
to a few dimensions first (`reduce_dim`), and every result records the dimension used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from greedy.analysis._arrays import ArrayLike, reduce_dim, to_tensor
from greedy.analysis.context import Context, entry, family
from greedy.analysis.representations import block_prefix, pool_map
from greedy.models import GreedyNet

LN2 = math.log(2.0)


def gaussian_entropy(d: int, beta: float) -> float:
    """Differential entropy in nats of N(0, beta^2 I_d): d/2 ln(2 pi e beta^2)."""
    return 0.5 * d * math.log(2.0 * math.pi * math.e * beta**2)


def _mixture_log_excess(
    centers: torch.Tensor, beta: float, n_draws: int, generator: torch.Generator, chunk: int
) -> torch.Tensor:
    """Draw t from the equal-weight mixture and return ln sum_j exp(-(|t-s_j|^2 - |t-s_i|^2)/(2 beta^2))."""
    n, _ = centers.shape
    comp = torch.randperm(n, generator=generator)[torch.arange(n_draws) % n]  # every component equally often
    sq = (centers**2).sum(dim=1)
    out = torch.empty(n_draws, dtype=centers.dtype)
    for start in range(0, n_draws, chunk):
        ci = comp[start:start + chunk]
        t = centers[ci] + beta * torch.randn(ci.numel(), centers.shape[1], generator=generator,
                                             dtype=centers.dtype)
        # |t - s_j|^2 - |t - s_i|^2 = |s_j|^2 - |s_i|^2 - 2 t.(s_j - s_i)
        diff = sq[None, :] - sq[ci][:, None] - 2.0 * (t @ centers.T - (t * centers[ci]).sum(1, keepdim=True))
        out[start:start + chunk] = torch.logsumexp(-diff / (2.0 * beta**2), dim=1)
    return out


def gaussian_mixture_entropy(
    centers: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0, chunk: int | None = None
) -> dict[str, float]:
    """Monte-Carlo entropy in nats of (1/n) sum_i N(centers_i, beta^2 I), with its (iid) standard error.

    Draws are processed `chunk` at a time (default: chunk * n <= 2^23, about 64 MiB of distances).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    c = to_tensor(centers)
    c = c.reshape(c.shape[0], -1)
    n, d = c.shape
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    gen = torch.Generator().manual_seed(seed)
    chunk = chunk or max(1, min(4096, 2**23 // n))
    excess = _mixture_log_excess(c, beta, mc_samples, gen, chunk)
    h = gaussian_entropy(d, beta) + math.log(n) - float(excess.mean())
    stderr = float(excess.std()) / math.sqrt(mc_samples) if mc_samples > 1 else float("nan")
    return {"entropy": h, "stderr": stderr}


def _mi_result(h_t: float, h_cond: float, stderr: float, **settings) -> dict[str, float]:
    """I = h(T) - h(T|X) in nats and bits, with its parts and the settings that produced it."""
    mi = h_t - h_cond
    return {"mi_nats": mi, "mi_bits": mi / LN2, "h_t": h_t, "h_t_given_x": h_cond, "stderr_nats": stderr,
            **settings}


def sp_mutual_information(
    clean_outputs: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """SP estimate of I(X; f(X) + Z), Z ~ N(0, beta^2 I), from the clean outputs f(x_i) of n samples of X.

    Returns mi_nats, mi_bits, h_t, h_t_given_x (exact), stderr_nats (Monte-Carlo), dim, n, beta, mc_samples.
    """
    c = to_tensor(clean_outputs)
    c = c.reshape(c.shape[0], -1)
    n, d = c.shape
    h_t = gaussian_mixture_entropy(c, beta, mc_samples=mc_samples, seed=seed)
    h_cond = gaussian_entropy(d, beta)
    return _mi_result(h_t["entropy"], h_cond, h_t["stderr"], dim=d, n=n, beta=beta, mc_samples=mc_samples)


def sp_mutual_information_noisy(
    outputs: ArrayLike, beta: float, mc_samples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """SP estimate of I(X;T), T = S + Z, from n x r x d samples of S (r noisy forward passes per input).

    For layers after the first noisy one S is random given X: h(T|X) is then the average over inputs of
    the SP entropy of the r-component mixture of that input, and h(T) that of all n*r components.
    Monte-Carlo budget: mc_samples for h(T) and max(mc_samples // n, r) per input for h(T|X).
    """
    s = to_tensor(outputs)
    if s.ndim < 3:
        raise ValueError(f"expected n x r x d samples, got shape {tuple(s.shape)}")
    s = s.reshape(s.shape[0], s.shape[1], -1)
    n, r, d = s.shape
    h_t = gaussian_mixture_entropy(s.reshape(n * r, d), beta, mc_samples=mc_samples, seed=seed)
    per_input = max(mc_samples // n, r)
    conds = [
        gaussian_mixture_entropy(s[i], beta, mc_samples=per_input, seed=seed + 1 + i) for i in range(n)
    ]
    h_cond = float(np.mean([c["entropy"] for c in conds]))
    cond_err = math.sqrt(sum(c["stderr"] ** 2 for c in conds)) / n if r > 1 else 0.0
    stderr = math.sqrt(h_t["stderr"] ** 2 + cond_err**2)
    return _mi_result(h_t["entropy"], h_cond, stderr, dim=d, n=n, beta=beta, mc_samples=mc_samples)


def sp_mutual_information_layers(
    layer_outputs: Sequence[ArrayLike],
    beta: float,
    mc_samples: int = 10000,
    seed: int = 0,
    max_dim: int | None = None,
    method: str = "pca",
    samples_per_input: bool = False,
) -> list[dict[str, float]]:
    """SP estimate of I(X;T_l) for every layer l from its pre-noise outputs S_l (one entry per layer).

    Default: entries are N x ... deterministic outputs f_l(x_i) (h(T|X) exact). With samples_per_input,
    entries are N x R x ... : R noisy forward passes per input (noise injected at every earlier layer).
    With max_dim set, every layer is first reduced to at most max_dim dimensions by `reduce_dim` (on all
    samples together). Each result carries its layer index and the dimension used.
    """
    results = []
    for layer, out in enumerate(layer_outputs):
        t = to_tensor(out)
        n = t.shape[0]
        r = t.shape[1] if samples_per_input else 1
        flat = t.reshape(n * r, *t.shape[(2 if samples_per_input else 1):])
        flat = reduce_dim(flat, max_dim, method=method) if max_dim is not None else flat.reshape(n * r, -1)
        if samples_per_input:
            res = sp_mutual_information_noisy(flat.reshape(n, r, -1), beta, mc_samples=mc_samples,
                                              seed=seed + layer)
        else:
            res = sp_mutual_information(flat, beta, mc_samples=mc_samples, seed=seed + layer)
        res["layer"] = layer
        results.append(res)
    return results


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

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


@family("information", during={"mi_nats": "mi_xt", "stderr_nats": "mi_xt_stderr", "n": "mi_xt_n", "beta": "beta"})
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
        layers.append(entry(la, **res, deterministic_given_x=deterministic, orthonormal_readout=even))
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
