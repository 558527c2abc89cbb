"""Models: blocks (units), auxiliary nets, tracing and splitting a chain of units, GreedyNet, timm backbones.

Importing this registers every shipped config with timm (`timm.create_model('greedy_cifar10_k3')`, timm_models.py).
"""

from greedy.models import timm_models  # noqa: F401  registers the greedy models with timm
from greedy.models.greedy_net import GreedyNet, check_shapes, create_greedy_net, stage_param_count
from greedy.models.tracing import split_units, trace_units

__all__ = ["GreedyNet", "check_shapes", "create_greedy_net", "split_units", "stage_param_count", "trace_units"]
