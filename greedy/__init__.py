"""greedy: greedy layerwise training of CNNs with auxiliary problems.

`import greedy` (which any `import greedy.x` runs first) loads every module that registers a choice of a config key
(greedy/registry.py), as `import timm` loads every model: the config schema checks names against complete registries
without importing an implementation itself.
"""

import sys

__version__ = "0.1.0"


def _import_timm_without_wandb() -> None:
    """timm imports wandb whenever it is installed; wandb must load only for runs that ask for it (--wandb)."""
    if "timm" in sys.modules or "wandb" in sys.modules:
        return
    sys.modules["wandb"] = None  # `import wandb` raises ImportError, which timm tolerates
    try:
        import timm  # noqa: F401
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]


_import_timm_without_wandb()


# the implementations that fill greedy.registry (after timm, which must load without wandb)
import greedy.analysis.during  # noqa: E402, F401  probe families: PROBES
import greedy.datasets  # noqa: E402, F401  data sets: DATASETS
import greedy.models.heads  # noqa: E402, F401  auxiliary nets: HEADS
import greedy.objectives  # noqa: E402, F401  local objectives: OBJECTIVES


def __getattr__(name: str):
    """The Python front door (greedy/api.py), imported on first use: `greedy.train`, `greedy.analyze`,
    `greedy.TrainResult`, `greedy.tensor_data`, `greedy.loader_data`, `greedy.create_net`, `greedy.make_config`,
    `greedy.GreedyNet`, `greedy.UsageError`."""
    if name in ("train", "analyze", "TrainResult", "tensor_data", "loader_data", "create_net", "make_config",
                "GreedyNet"):
        from greedy import api

        return getattr(api, name)
    if name == "UsageError":
        from greedy.errors import UsageError

        return UsageError
    raise AttributeError(f"module 'greedy' has no attribute {name!r}")
