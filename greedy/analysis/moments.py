"""Moments of the signal and of a propagated input noise (Labatie, ICML 2019): pathologies by depth.

Labatie (*Characterizing Well-Behaved vs. Pathological Deep Neural Networks*, ICML 2019) follows a batch of
inputs x and an infinitesimal input noise dx through the net: the signal x^l and the noise dx^l = J_l(x) dx
(J_l the Jacobian of layer l's output with respect to the input; here a forward-mode Jacobian-vector product,
`torch.func.jvp`, exact for the linearized noise). A feature map is read as the paper reads it: one vector of
C channels per input *and spatial position* (N x C x H x W -> N*H*W vectors of size C; an N x D output is N
vectors of size D). On these vectors:

- signal power mu2(x^l): the mean over channels of the variance of each channel over inputs and positions
  (the paper's centered second moment, Tr C_x / C);
- noise power mu2(dx^l): the mean squared noise, E[dx^2] over inputs, positions and channels (the noise is
  centered: the paper's mu2(dx) = nu2(dx));
- normalized sensitivity chi^l = sqrt( (mu2(dx^l) / mu2(x^l)) / (mu2(dx^0) / mu2(x^0)) ), the growth of the
  noise-to-signal *amplitude* ratio from the input to layer l (the paper's definition, a square root);
  chi^l >> 1 is the paper's exploding-sensitivity pathology;
- effective rank r_eff = Tr C / lambda_max(C) of the centered covariance C of the vectors (the paper's
  definition, as in its code: the ratio of the trace to the largest eigenvalue, not Roy & Vetterli's
  exp-entropy); r_eff -> 1 is the one-dimensional-signal pathology.

Covariances are accumulated batch by batch (`CovarianceSums`), so memory is C x C per layer.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from greedy.analysis._arrays import ArrayLike, to_tensor
from greedy.analysis.context import Context, entry, family
from greedy.analysis.representations import Layer, iter_layer_outputs, probe_layers
from greedy.models import GreedyNet


def channel_vectors(t: ArrayLike) -> torch.Tensor:
    """N x C x H x W -> (N*H*W) x C (one channel vector per input and position); N x D stays N x D (float64)."""
    t = to_tensor(t)
    if t.ndim == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    if t.ndim == 2:
        return t
    raise ValueError(f"need an N x C x H x W map or an N x D matrix, got shape {tuple(t.shape)}")


@dataclass
class CovarianceSums:
    """Running count, sum and sum of outer products of vectors of one dimension (float64)."""

    n: int = 0
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None

    def add(self, t: ArrayLike) -> None:
        """Add a batch (any shape `channel_vectors` takes)."""
        v = channel_vectors(t)
        if self.total is None:
            self.total, self.outer = v.new_zeros(v.shape[1]), v.new_zeros(v.shape[1], v.shape[1])
        self.n += v.shape[0]
        self.total += v.sum(0)
        self.outer += v.T @ v

    def second_moment(self) -> torch.Tensor:
        """E[v v^T] (C x C)."""
        return self.outer / self.n

    def covariance(self) -> torch.Tensor:
        """E[v v^T] - E[v] E[v]^T (C x C), the centered covariance."""
        mean = self.total / self.n
        return self.second_moment() - torch.outer(mean, mean)


def effective_rank(cov: ArrayLike) -> float:
    """Labatie's effective rank Tr C / lambda_max(C) of a covariance matrix C (D x D, symmetric PSD).

    1 for a rank-1 C, D for C proportional to the identity; nan for C = 0.
    """
    c = to_tensor(cov)
    evals = torch.linalg.eigvalsh((c + c.T) / 2).clamp(min=0)
    top = float(evals[-1])
    return float(evals.sum()) / top if top > 0 else float("nan")


def power(cov: ArrayLike) -> float:
    """Mean over channels of a (second-moment or covariance) matrix's diagonal: Tr C / D."""
    c = to_tensor(cov)
    return float(torch.trace(c)) / c.shape[0]


def normalized_sensitivity(signal_power: float, noise_power: float, signal_power0: float,
                           noise_power0: float) -> float:
    """chi^l = sqrt((noise_power / signal_power) / (noise_power0 / signal_power0)) (Labatie 2019, eq. of chi).

    Index 0 is the input. inf when the layer's signal power is 0 and its noise power is not; nan if both are 0.
    """
    ratio0 = noise_power0 / signal_power0
    if signal_power == 0:
        return float("nan") if noise_power == 0 else float("inf")
    return math.sqrt((noise_power / signal_power) / ratio0)


@dataclass
class LayerMoments:
    """Streaming moments of one layer's signal and noise."""

    signal: CovarianceSums = field(default_factory=CovarianceSums)
    noise: CovarianceSums = field(default_factory=CovarianceSums)

    def add(self, x: ArrayLike, dx: ArrayLike) -> None:
        self.signal.add(x)
        self.noise.add(dx)

    def summary(self) -> dict[str, float]:
        """signal_power (centered), noise_power (E dx^2), reff_signal, reff_noise (centered), dim (C)."""
        cov_x, cov_dx = self.signal.covariance(), self.noise.covariance()
        return {"signal_power": power(cov_x), "noise_power": power(self.noise.second_moment()),
                "reff_signal": effective_rank(cov_x), "reff_noise": effective_rank(cov_dx),
                "dim": int(cov_x.shape[0])}


def signal_noise_moments(signals: list[ArrayLike], noises: list[ArrayLike]) -> list[dict[str, float]]:
    """Per layer (index 0 the input): `LayerMoments.summary()` and chi (Labatie 2019) of full signals and noises.

    signals[l], noises[l]: layer l's N x C x H x W (or N x D) signal x^l and noise dx^l on the same inputs.
    """
    rows = []
    for x, dx in zip(signals, noises, strict=True):
        m = LayerMoments()
        m.add(x, dx)
        rows.append(m.summary())
    for row in rows:
        row["chi"] = normalized_sensitivity(row["signal_power"], row["noise_power"], rows[0]["signal_power"],
                                            rows[0]["noise_power"])
    return rows


# --- the probe family (glue: settings, layers, readouts) --------------------------------------------------

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


@family("moments", at_init=True)
def probe_moments(ctx: Context) -> dict[str, Any]:
    """Signal and noise moments by depth, at initialization and trained (Labatie 2019): power, chi, r_eff."""
    s = ctx.settings
    layers = probe_layers(ctx.net, s.heads)
    n = min(s.moments_samples, ctx.test.x.shape[0])
    results = {prefix: layer_moments(net, ctx.test.x[:n], layers, s.seed, s.batch_size) for prefix, net in ctx.nets()}
    entries = [entry(la, **{f"{prefix}{k}": v for prefix, res in results.items() for k, v in res[la.name].items()})
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
