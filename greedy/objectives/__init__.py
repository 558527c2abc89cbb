"""Local objectives, one file each, registered in `greedy.registry.OBJECTIVES` (config key `objective`).

    base.py    LocalObjective (the interface the trainer sees), ModuleSpec, total_loss
    ce.py      ce: cross-entropy of the auxiliary net (greedy SL with cnn(k), DGL's mlp_sr): the default

A new objective is one file here with a LocalObjective subclass decorated with `@OBJECTIVES.register("name")`, and
its import below.
"""

from greedy.objectives import ce  # noqa: F401  registers ce
from greedy.objectives.base import LocalObjective, ModuleSpec, total_loss
from greedy.registry import OBJECTIVES


def create_objective(name: str, spec: ModuleSpec) -> LocalObjective:
    """The registered objective `name` for the local module `spec`; raises UsageError for an unknown name."""
    return OBJECTIVES.get(name)(spec)


__all__ = ["OBJECTIVES", "LocalObjective", "ModuleSpec", "create_objective", "total_loss"]
