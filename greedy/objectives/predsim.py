"""`predsim`: the similarity-matching and prediction losses of Nøkland & Eidnes, "Training Neural Networks with
Local Error Signals" (ICML 2019).

L = beta * L_sim + (1 - beta) * L_pred (beta = 0.99 in the paper):
- L_sim: mean squared error between the similarity matrix of the module's output, passed through the objective's own
  bias-free 3x3 convolution, and the similarity matrix of the one-hot labels (`similarity_matrix`);
- L_pred: cross-entropy of a zero-initialised linear layer on the output average-pooled to at most `predsim_dim`
  features (4096).
The last module is the net's classifier and trains on cross-entropy, as the paper's output layer does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from greedy.objectives.base import ModuleSpec, ReadoutObjective
from greedy.registry import OBJECTIVES

EPS = 1e-8  # added to each row's norm before the cosine similarity


def similarity_matrix(z: torch.Tensor) -> torch.Tensor:
    """The N x N cosine-similarity matrix of a batch (Nøkland & Eidnes 2019, section 3.1), values in [-1, 1].

    `z`: N x C x H x W feature maps (each channel reduced to its spatial standard deviation, unbiased, when C > 3
    and H > 1), or any N x ... tensor (flattened to N x D, e.g. one-hot labels N x classes). Each row is
    mean-centred, divided by its L2 norm + 1e-8, and the matrix of dot products is clamped to [-1, 1].
    Computed in float32.
    """
    z = z.float()
    if z.dim() == 4 and z.shape[1] > 3 and z.shape[2] > 1:
        z = z.flatten(2).std(dim=2)
    else:
        z = z.flatten(1)
    z = z - z.mean(dim=1, keepdim=True)
    z = z / (z.norm(dim=1, keepdim=True) + EPS)
    return (z @ z.T).clamp(-1, 1)


def pooled_size(shape: tuple[int, ...], max_features: int) -> tuple[int, int]:
    """The (height, width) the prediction loss average-pools a C x H x W output to: H and W halved in turn
    (rounding up) until C * height * width <= max_features or both are 1."""
    chans, height, width = shape
    kh = kw = 1
    h, w = height, width
    while chans * h * w > max_features and (h > 1 or w > 1):
        if h > 1:
            kh *= 2
            h = math.ceil(height / kh)
        if chans * h * w > max_features and w > 1:
            kw *= 2
            w = math.ceil(width / kw)
    return h, w


@OBJECTIVES.register("predsim")
class PredSim(ReadoutObjective):
    """{"sim": beta * L_sim, "pred": (1 - beta) * L_pred, "readout": cross-entropy of the auxiliary net on the
    detached output} for modules 1..K-1; {"ce": cross-entropy of the net's classifier} for the last.

    Owns, on modules 1..K-1, a bias-free 3x3 conv C -> C (`sim_conv`) and a zero-initialised Linear
    C * h * w -> classes (`pred`, h x w = `pooled_size(out_shape, predsim_dim)`). Raises ValueError when the
    module's output shape is not known or not C x H x W.
    """

    local_term_names = ("sim", "pred")

    def __init__(self, spec: ModuleSpec, predsim_beta: float = 0.99, predsim_dim: int = 4096) -> None:
        super().__init__(spec)
        self.beta = predsim_beta
        if spec.last:
            return
        if spec.out_shape is None or len(spec.out_shape) != 3:
            raise ValueError(f"predsim needs the C x H x W output shape of module {spec.index + 1}, got "
                             f"{spec.out_shape}; build the stages with GreedyBuilder.for_run (or image_shape=...)")
        chans = spec.out_shape[0]
        self.pool = pooled_size(spec.out_shape, predsim_dim)
        self.sim_conv = nn.Conv2d(chans, chans, 3, padding=1, bias=False)
        self.pred = nn.Linear(chans * self.pool[0] * self.pool[1], spec.num_classes)
        nn.init.zeros_(self.pred.weight)

    def local_terms(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        onehot = F.one_hot(y, self.spec.num_classes)
        sim = F.mse_loss(similarity_matrix(self.sim_conv(h)), similarity_matrix(onehot))
        pred = F.cross_entropy(self.pred(F.adaptive_avg_pool2d(h, self.pool).flatten(1)), y)
        return {"sim": self.beta * sim, "pred": (1 - self.beta) * pred}
