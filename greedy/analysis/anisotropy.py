"""Anisotropy of the SGD noise (Zhu, Wu, Yu, Wu & Ma, ICML 2019): Tr(H Sigma) against its isotropic equivalent.

H is the Hessian of the mean training loss L(theta) = (1/n) sum_n l_n(theta) at the trained weights, Sigma the
covariance of the per-sample gradients g_n = grad l_n(theta) (the noise of SGD with batch size B is Sigma / B;
every ratio below is the same for any B). Zhu et al.'s indicator of how well the noise escapes sharp minima is
Tr(H Sigma); noise of the same total variance spread evenly over the D parameters, Sigma_iso = Tr(Sigma) / D I,
gives Tr(H) Tr(Sigma) / D. Their ratio is 1 for isotropic noise and grows as the noise lines up with the sharp
directions of H.

Nothing of size D x D is formed: H is touched only through Hessian-vector products (forward-over-reverse,
torch.func.jvp of torch.func.grad), its top-r eigenpairs come from Lanczos (scipy's eigsh on a LinearOperator),
Tr(H) from Hutchinson's estimator on the part of the space the top-r eigenvectors leave out (the Hutch++ idea,
Meyer, Musco, Musco & Woodruff 2021: exact when r = D), and Sigma only through one streamed pass over per-sample
gradients (torch.func.vmap of grad, in chunks):

    u^T Sigma u = mean_n (g_n . u)^2 - (gbar . u)^2,      Tr(Sigma) = mean_n ||g_n||^2 - ||gbar||^2,

(the plug-in covariance with 1/n). The low-rank estimate Tr(H Sigma) ~= sum_{i<=r} lambda_i u_i^T Sigma u_i is the
exact trace when r = D, and a lower bound when H is positive semi-definite on the directions left out (their
terms lambda_i u_i^T Sigma u_i are then >= 0); `top_fraction` = sum_{i<=r} lambda_i / Tr(H) says how much of H
the top r directions hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from greedy.analysis.context import Context, family

Hvp = Callable[[torch.Tensor], torch.Tensor]  # (D,) -> (D,) = H v
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> mean loss (scalar)


def top_hessian_eigs(hvp: Hvp, dim: int, rank: int, seed: int = 0, tol: float = 1e-4
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The `rank` algebraically largest eigenpairs of the symmetric D x D operator `hvp` (float64, CPU).

    Lanczos with implicit restarts (ARPACK through scipy.sparse.linalg.eigsh, which='LA', seeded start vector,
    2 rank + 4 Lanczos vectors: each product is a pass over the data, ARPACK's minimum of 20 wastes them) when
    rank < dim; with rank >= dim, the dense matrix from dim products and torch.linalg.eigh (exact, for small
    problems and tests). Returns (eigenvalues (r,), descending; eigenvectors (D, r), orthonormal columns), r =
    min(rank, dim). Raises ValueError for rank < 1.
    """
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if rank >= dim:
        eye = torch.eye(dim, dtype=torch.float64)
        dense = torch.stack([hvp(eye[i]).double() for i in range(dim)], dim=1)
        vals, vecs = torch.linalg.eigh(0.5 * (dense + dense.T))
        return vals.flip(0), vecs.flip(1)

    def matvec(v: np.ndarray) -> np.ndarray:
        return hvp(torch.from_numpy(np.ascontiguousarray(v).ravel())).double().numpy()

    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    vals, vecs = eigsh(op, k=rank, which="LA", v0=v0, tol=tol, ncv=min(dim, 2 * rank + 4))
    order = np.argsort(vals)[::-1].copy()
    return torch.from_numpy(vals[order].copy()), torch.from_numpy(vecs[:, order].copy())


def hutchinson_trace(hvp: Hvp, dim: int, probes: int, seed: int = 0, deflate: torch.Tensor | None = None
                     ) -> tuple[float, float]:
    """Tr(H) from `probes` Rademacher vectors z: mean z^T H z (Hutchinson 1989), deflated by `deflate`.

    With orthonormal columns U (D x r) given as `deflate`, Tr(H) = Tr(U^T H U) + Tr(P H P), P = I - U U^T, exactly
    for any such U; the first term is computed (r products), the second estimated from P z (Hutch++, Meyer et al.
    2021), so the estimate is exact when U spans the whole space and has less variance when U holds the large
    eigenvalues. Returns (estimate, standard error of the mean over probes). Raises ValueError for probes < 1.
    """
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    gen = torch.Generator().manual_seed(seed)
    head = 0.0
    if deflate is not None:
        u = deflate.double()
        head = float(sum(u[:, i] @ hvp(u[:, i]).double() for i in range(u.shape[1])))
    values = []
    for _ in range(probes):
        z = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1
        if deflate is not None:
            z = z - u @ (u.T @ z)
        values.append(float(z @ hvp(z).double()))
    v = np.asarray(values)
    stderr = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return head + float(v.mean()), stderr


def gradient_moments(grads: Iterable[torch.Tensor], directions: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """Covariance statistics of per-sample gradients, streamed over chunks, without a D x D matrix.

    grads: chunks of per-sample gradients (n_c, D); directions: U (D, r). With gbar = mean_n g_n (plug-in 1/n):
    returns {"n", "mean": gbar (D,), "trace": Tr(Sigma) = mean ||g_n||^2 - ||gbar||^2,
    "u_sigma_u": (r,) u_i^T Sigma u_i = mean (g_n . u_i)^2 - (gbar . u_i)^2}, accumulated in float64.
    Raises ValueError when there are no gradients.
    """
    n, total, sq, proj_sq, u = 0, None, 0.0, None, None
    for chunk in grads:
        g = chunk.detach().double()  # on the gradients' device: a chunk is n_c x D
        if u is None:
            u = directions.to(g.device, torch.float64)
            total, proj_sq = torch.zeros_like(g[0]), torch.zeros(u.shape[1], dtype=torch.float64, device=g.device)
        n += g.shape[0]
        total += g.sum(0)
        sq += float((g * g).sum())
        proj_sq += ((g @ u) ** 2).sum(0)
    if u is None or n == 0:
        raise ValueError("no per-sample gradients")
    mean = total / n
    return {"n": n, "mean": mean.cpu(), "trace": sq / n - float(mean @ mean),
            "u_sigma_u": (proj_sq / n - (mean @ u) ** 2).cpu()}


def anisotropy_indicator(eigvals: torch.Tensor, u_sigma_u: torch.Tensor, trace_h: float, trace_sigma: float,
                         dim: int) -> dict[str, float]:
    """Zhu et al. (2019)'s indicator Tr(H Sigma) from the top-r eigenpairs, against its isotropic equivalent.

    eigvals: lambda_i (r,), u_sigma_u: u_i^T Sigma u_i (r,) for the same eigenvectors u_i; trace_h = Tr(H),
    trace_sigma = Tr(Sigma), dim = D. Returns {"tr_h_sigma": sum lambda_i u_i^T Sigma u_i (exact for r = D, a
    lower bound when H is PSD on the rest), "tr_h_sigma_iso": Tr(H) Tr(Sigma) / D, "ratio": their quotient (1 for
    isotropic Sigma; nan when the isotropic value is 0), "top_fraction": sum lambda_i / Tr(H)}.
    """
    tr_hs = float((eigvals.double() * u_sigma_u.double()).sum())
    iso = trace_h * trace_sigma / dim
    return {"tr_h_sigma": tr_hs, "tr_h_sigma_iso": iso, "ratio": tr_hs / iso if iso != 0 else float("nan"),
            "top_fraction": float(eigvals.double().sum()) / trace_h if trace_h != 0 else float("nan")}


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, x.shape[0], size):
        yield x[start:start + size], y[start:start + size]


def noise_anisotropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rank: int = 8, probes: int = 16,
                     seed: int = 0, params: Sequence[str] | None = None, loss: Loss = F.cross_entropy,
                     batch_size: int = 256, grad_chunk: int | None = None, max_chunk_bytes: int = 2**28,
                     tol: float = 1e-2) -> dict[str, float]:
    """Zhu et al.'s noise indicator of `model` at its current weights on the samples (x (n, ...), y (n, ...)).

    The loss is `loss(model(x_b), y_b)` (a mean over the batch; default cross-entropy), its Hessian and gradients
    taken with respect to the parameters named in `params` (default: all of them; the rest and every buffer stay
    fixed). The model runs in eval mode (BatchNorm uses its running statistics, so each sample's gradient is well
    defined), on its own device; Hessian-vector products are taken on batches of `batch_size` and weighted into
    the mean over all n, per-sample gradients in chunks of `grad_chunk` samples (default: as many as fit in
    `max_chunk_bytes` of float32 gradients, at most batch_size). `tol`: Lanczos' relative accuracy of the
    eigenvalues (1 % by default: finer than the sampling error of H on n samples and than Hutchinson's on Tr(H)).
    Cost: 2 rank + 4 Hessian-vector products for Lanczos (restarts add more; 13-40 in practice for rank 2-4),
    rank + probes for Tr(H), each over the n samples, and one pass of per-sample gradients.

    Returns anisotropy_indicator's values plus {"dim": D, "n": n, "rank": r, "trace_h", "trace_h_stderr",
    "trace_sigma", "mean_grad_sq": ||gbar||^2 (0 at a stationary point of the sampled loss), "lambda_max",
    "lambda_min_top": the r-th eigenvalue, "eigenvalues": the top r, "hvp_calls"}.
    """
    was_training = model.training
    model.eval()
    try:
        return _noise_anisotropy(model, x, y, rank=rank, probes=probes, seed=seed, params=params, loss=loss,
                                 batch_size=batch_size, grad_chunk=grad_chunk, max_chunk_bytes=max_chunk_bytes,
                                 tol=tol)
    finally:
        model.train(was_training)


def _noise_anisotropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rank: int, probes: int, seed: int,
                      params: Sequence[str] | None, loss: Loss, batch_size: int, grad_chunk: int | None,
                      max_chunk_bytes: int, tol: float) -> dict[str, float]:
    named = dict(model.named_parameters())
    names = list(params) if params is not None else list(named)
    missing = [n for n in names if n not in named]
    if missing or not names:
        raise ValueError(f"no such parameters in the model: {missing or 'none given'}")
    theta = {n: named[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in theta}
    fixed.update(dict(model.named_buffers()))
    shapes = [theta[n].shape for n in names]
    sizes = [theta[n].numel() for n in names]
    dim = sum(sizes)
    device, dtype = theta[names[0]].device, theta[names[0]].dtype
    n = x.shape[0]

    def unflatten(v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = v.to(device=device, dtype=dtype).split(sizes)
        return {name: p.view(s) for name, p, s in zip(names, parts, shapes, strict=True)}

    def batch_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, {**fixed, **p}, (xb,)), yb)

    calls = 0

    def hvp(v: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        tangent = unflatten(v)
        out = torch.zeros(dim, dtype=torch.float64)
        for xb, yb in _chunks(x, y, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            _, hv = jvp(lambda p: grad(batch_loss)(p, xb, yb), (theta,), (tangent,))  # noqa: B023
            out += torch.cat([hv[name].reshape(-1) for name in names]).double().cpu() * (xb.shape[0] / n)
        return out

    r = min(rank, dim)
    eigvals, eigvecs = top_hessian_eigs(hvp, dim, r, seed=seed, tol=tol)
    trace_h, trace_h_err = hutchinson_trace(hvp, dim, probes, seed=seed, deflate=eigvecs)

    def one_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return batch_loss(p, xi.unsqueeze(0), yi.unsqueeze(0))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))
    chunk = grad_chunk or max(1, min(batch_size, max_chunk_bytes // (4 * dim)))

    def grads() -> Iterator[torch.Tensor]:
        for xb, yb in _chunks(x, y, chunk):
            g = per_sample(theta, xb.to(device), yb.to(device))
            yield torch.cat([g[name].reshape(xb.shape[0], -1) for name in names], dim=1)

    moments = gradient_moments(grads(), eigvecs)
    indicator = anisotropy_indicator(eigvals, moments["u_sigma_u"], trace_h, moments["trace"], dim)
    return {**indicator, "dim": dim, "n": n, "rank": r, "trace_h": trace_h, "trace_h_stderr": trace_h_err,
            "trace_sigma": moments["trace"], "mean_grad_sq": float(moments["mean"] @ moments["mean"]),
            "lambda_max": float(eigvals[0]), "lambda_min_top": float(eigvals[-1]),
            "eigenvalues": eigvals.tolist(), "hvp_calls": calls}


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

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


@family("anisotropy")
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
