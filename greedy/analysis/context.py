"""What every probe family shares: its settings, the context it reads (net, data subsets, representations), the
shape of its per-layer entries, and the decorator that registers it in `greedy.registry.PROBES`.

A probe family is one function `fn(ctx: Context) -> dict` (JSON-ready: {"settings", "notes", "layers": [...], ...})
in the file of its estimator, decorated with `@family("name")`; `during` names the per-layer values it records
when it probes during training (config key `probes`), `pairwise` marks families of two runs (--compare) and
`at_init` those that also read the net at initialization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from greedy.analysis.representations import Layer, Representations, Sample, representations, seeded_sample
from greedy.datasets import DataBundle
from greedy.errors import UsageError
from greedy.models import GreedyNet
from greedy.registry import PROBES, did_you_mean


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
        return {k: plain(getattr(self, k)) for k in (*common, *keys)}


# the least value of each count (fewer gives no estimate: a 2-point path has no barrier, 1 sample no variance)
LOWER_BOUNDS = {"samples": 10, "pool": 0, "knn_k": 1, "info_dim": 1, "mc_samples": 2, "segments": 1,
                "noise_samples": 1, "threads": 1, "aniso_rank": 1, "aniso_samples": 2, "aniso_probes": 2,
                "path_points": 3}


def check_settings(settings: AnalysisSettings, spell: Callable[[str], str] = lambda f: f"analysis setting '{f}'"
                   ) -> AnalysisSettings:
    """Return `settings` if every count is at least its LOWER_BOUNDS value, beta > 0 and every sigma > 0; else raise
    UsageError naming the setting as `spell(field)` spells it (evaluate.py: its flag)."""
    for name, low in LOWER_BOUNDS.items():
        value = getattr(settings, name)
        if value < low:
            raise UsageError(f"{spell(name)} must be at least {low}, got {value}")
    if not settings.beta > 0:
        raise UsageError(f"{spell('beta')} must be positive, got {settings.beta}")
    if not settings.sigmas or any(not s > 0 for s in settings.sigmas):
        raise UsageError(f"{spell('sigmas')} must be positive numbers, got "
                         f"{','.join(map(str, settings.sigmas)) or 'none'}")
    return settings


def analysis_settings(values: Mapping[str, Any]) -> AnalysisSettings:
    """AnalysisSettings from keyword values (a Python caller's): each name a field (did-you-mean otherwise), each
    value of its field's type (an int is a float too; sigmas any sequence of numbers), checked by check_settings.
    Raises UsageError."""
    fields = {f.name: f for f in dataclasses.fields(AnalysisSettings)}
    defaults = AnalysisSettings()
    given = {}
    for name, value in values.items():
        if name not in fields:
            raise UsageError(f"unknown analysis setting {name!r}; {did_you_mean(name, fields)}choose from "
                             f"{', '.join(fields)}")
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            wanted = "a list of numbers"
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value)
            value = tuple(float(v) for v in value) if ok else value
        elif isinstance(default, bool):
            wanted, ok = "True or False", isinstance(value, bool)
        elif isinstance(default, int):
            wanted, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
        else:
            wanted, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise UsageError(f"analysis setting '{name}': {value!r} is not {wanted}")
        given[name] = value
    return check_settings(dataclasses.replace(defaults, **given))


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


def plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    return list(value) if isinstance(value, tuple) else value


def entry(layer: Layer, **values: Any) -> dict[str, Any]:
    """One per-layer result: {"layer", "depth", "kind", values...}."""
    return {"layer": layer.name, "depth": layer.depth, "kind": layer.kind, **values}


def seeded_pairs(n: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` seeded pairs (i, j), i != j, of indices into a subset of n items (regions' segments, chaos' pairs)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randperm(n, generator=gen)[:count].tolist()
    ends = [(i + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n for i in starts]
    return list(zip(starts, ends, strict=True))


@dataclass(frozen=True)
class ProbeFamily:
    """A registered probe family: `fn(ctx)` -> its JSON-ready result (see the module docstring)."""

    name: str
    fn: Callable[[Context], dict[str, Any]]
    during: dict[str, str] | None = None  # field of a per-layer entry -> key in a probe record during training
    pairwise: bool = False  # needs a second run (--compare): computed once, in run A's results
    at_init: bool = False  # also probes the net the run started from (init_* values)

    def __call__(self, ctx: Context) -> dict[str, Any]:
        return self.fn(ctx)


def family(name: str, *, during: dict[str, str] | None = None, pairwise: bool = False, at_init: bool = False
           ) -> Callable[[Callable[[Context], dict[str, Any]]], Callable[[Context], dict[str, Any]]]:
    """Register the decorated function as probe family `name` (evaluate.py --analysis NAME; with `during`, also
    config key `probes` during training). Raises ValueError when the name is taken."""
    def register(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        PROBES.add(name, ProbeFamily(name, fn, during, pairwise, at_init))
        return fn
    return register
