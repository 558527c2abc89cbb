"""Models: importing this registers every shipped config with timm (`timm.create_model('greedy_cifar10_k3')`)."""

from greedy.models.greedy_net import GreedyNet, check_shapes, create_greedy_net, split_units, stage_param_count

__all__ = ["GreedyNet", "check_shapes", "create_greedy_net", "split_units", "stage_param_count"]
