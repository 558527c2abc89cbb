"""Local objectives, one file each, registered in `greedy.registry.OBJECTIVES` (config key `objective`).

    base.py    LocalObjective (the interface the trainer sees), ModuleSpec, total_loss
    ce.py      ce: cross-entropy of the auxiliary net (greedy SL with cnn(k), DGL's mlp_sr): the default
    predsim.py predsim: similarity matching + prediction (Nøkland & Eidnes, ICML 2019)
    infopro.py infopro_ce, infopro_contrast: reconstruction + task loss (Wang et al., ICLR 2021)
    auglocal.py auglocal: cross-entropy of an auxiliary net built from the net's later units (Ma et al., ICLR 2024)
    man.py     man, man_pp: a base objective on LB(h) + EMA(h), momentum copies of the next unit (Su et al. 2024, 2026)

A new objective is one file here with a LocalObjective subclass decorated with `@OBJECTIVES.register("name")`, and
its import below.
"""

import inspect

from greedy.objectives import auglocal, ce, infopro, man, predsim  # noqa: F401  register each objective
from greedy.objectives.base import LocalObjective, ModuleSpec, total_loss
from greedy.registry import OBJECTIVES


def create_objective(name: str, spec: ModuleSpec, **options) -> LocalObjective:
    """The registered objective `name` for the local module `spec`; raises UsageError for an unknown name.

    `options` are the config's objective settings (e.g. predsim_beta, infopro_lambdas); each objective takes
    those its constructor names and ignores the rest (as `models.heads.create_head` does)."""
    cls = OBJECTIVES.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(spec, **{key: value for key, value in options.items() if key in accepted})


__all__ = ["OBJECTIVES", "LocalObjective", "ModuleSpec", "create_objective", "total_loss"]
