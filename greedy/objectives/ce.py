"""`ce`: cross-entropy of the local module's auxiliary net, the default objective.

The auxiliary net is the one the config's `aux` (and `k`, `aux_width`, `pool_size`) chooses, so this one entry
covers greedy supervised learning with the paper's cnn(k) nets (Belilovsky, Eickenberg, Oyallon, ICML 2019), DGL's
mlp_sr (Belilovsky et al., ICML 2020) and InfoPro's "greedy SL" baseline (Wang et al., ICLR 2021, Table 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from greedy.objectives.base import LocalObjective
from greedy.registry import OBJECTIVES


@OBJECTIVES.register("ce")
class CrossEntropy(LocalObjective):
    """{"ce": mean cross-entropy of the auxiliary net's logits (N x classes) against the labels (N,)}."""

    def forward(self, h: torch.Tensor | None, logits: torch.Tensor, y: torch.Tensor,
                x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(logits, y)}
