"""Test error in Gaussian noise and the distance to the nearest error it implies (Ford et al., ICML 2019).

If the error set near a correctly classified point x is a half-space at distance d, the error rate of
x + N(0, sigma^2 I) is p = Phi(-d / sigma), so d = -sigma * Phi^{-1}(p). This is defined for 0 < p < 1/2;
p = 0 only says d is beyond the resolution of the sample (reported as inf) and p >= 1/2 means d <= 0
(reported as nan: the point is not robustly correct and the linear picture does not apply).

Aggregates, for each sigma: `median_distance`, the median of per-point distances over the points with
p < 1/2 (points with p = 0 count as +inf, so the median is well defined while fewer than half of them
are inf), and `distance_from_mean_error` = -sigma * Phi^{-1}(mean p) over all points, Ford et al.'s
half-space reading of the aggregate error rate in noise (inf / nan for mean p = 0 / >= 1/2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from greedy.analysis._arrays import ArrayLike, as_labels, to_tensor
from greedy.analysis.context import Context, family
from greedy.analysis.representations import head_model

Model = Callable[[torch.Tensor], torch.Tensor]


def implied_distance(p: ArrayLike, sigma: float) -> np.ndarray:
    """Distance to a half-space error set implied by error rate p under N(0, sigma^2 I): -sigma Phi^{-1}(p).

    inf where p == 0, nan where p >= 1/2 (see module docstring).
    """
    pa = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = -sigma * norm.ppf(pa)
    d = np.where(pa <= 0, np.inf, d)
    return np.where(pa >= 0.5, np.nan, d)


def _predict(model: Model, x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Class predictions on the CPU: argmax of 2-D outputs (logits), 1-D outputs taken as labels."""
    with torch.no_grad():
        out = model(x.to(device))
    out = out.detach().cpu()
    return out.argmax(dim=1) if out.ndim == 2 else out.reshape(-1).long()


def noise_error_rates(
    model: Model,
    X: ArrayLike,
    y: ArrayLike,
    sigmas: Sequence[float],
    n_samples: int = 100,
    seed: int = 0,
    batch_size: int = 4096,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Per-point error rates of `model` on X + N(0, sigma^2 I) (n_samples draws per point) for each sigma.

    `model` maps a batch (moved to `device`; noise is drawn on the CPU) to logits (B x K, argmax taken) or
    to labels (B). Returns arrays indexed by sigma:
    sigmas, clean_correct (N, bool), error_rate (S x N), mean_error (S), distance (S x N, implied_distance),
    median_distance (S), distance_from_mean_error (S); the module docstring defines the aggregates.
    """
    x = to_tensor(X, dtype)
    labels = torch.as_tensor(as_labels(y)).long()
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"X has {x.shape[0]} samples but y has {labels.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    clean_pred = torch.cat([_predict(model, x[i:i + batch_size], device) for i in range(0, n, batch_size)])
    clean = clean_pred == labels
    per_batch = max(1, batch_size // n_samples)
    rates = np.zeros((len(sigmas), n))
    for s_i, sigma in enumerate(sigmas):
        for start in range(0, n, per_batch):
            xb = x[start:start + per_batch]
            rep = xb.repeat_interleave(n_samples, dim=0)
            noisy = rep + sigma * torch.randn(rep.shape, generator=gen, dtype=dtype)
            target = labels[start:start + per_batch].repeat_interleave(n_samples)
            wrong = _predict(model, noisy, device) != target
            rates[s_i, start:start + xb.shape[0]] = wrong.reshape(-1, n_samples).double().mean(1).numpy()
    sig = np.asarray(sigmas, dtype=np.float64)
    dist = np.stack([implied_distance(rates[i], s) for i, s in enumerate(sig)]) if len(sig) else rates
    mean_err = rates.mean(axis=1)
    median = np.array([np.median(row[~np.isnan(row)]) if np.any(~np.isnan(row)) else np.nan for row in dist])
    from_mean = np.array([float(implied_distance(m, s)) for m, s in zip(mean_err, sig, strict=True)])
    return {
        "sigmas": sig,
        "clean_correct": clean.numpy(),
        "error_rate": rates,
        "mean_error": mean_err,
        "distance": dist,
        "median_distance": median,
        "distance_from_mean_error": from_mean,
    }


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

@family("noise")
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
