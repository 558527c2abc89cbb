"""`infopro_ce` and `infopro_contrast`: the InfoPro loss of Wang, Ni, Song, Yang, Huang, "Revisiting Locally
Supervised Learning: an Alternative to End-to-end Training" (ICLR 2021).

Modules 1..K-1 minimise L = lambda1 * L_recon + lambda2 * L_task:
- L_recon: the module's output upsampled (bilinear) to the input's size, decoded by conv3x3 (to 12 channels) + BN
  + ReLU + conv3x3 (to the input's channels) + sigmoid, binary cross-entropy against the input de-normalised to
  [0, 1] (a lower bound on I(h, x), section 3.2);
- L_task: a head of one stride-2 conv3x3 (width doubled) + BN + ReLU + global average pool + FC(128) + ReLU + FC,
  trained with cross-entropy (infopro_ce, FC to the classes) or with the supervised contrastive loss of Khosla et
  al. (NeurIPS 2020) on the L2-normalised 128-d output, temperature 0.07 (infopro_contrast, FC to 128).
lambda interpolates linearly from (lambda1, lambda2) of module 1 to those of module K-1 (`infopro_weights`).
The last module trains with the net's own classifier and cross-entropy.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from greedy.objectives.base import ModuleSpec, ReadoutObjective
from greedy.registry import OBJECTIVES

DECODER_WIDTH = 12
FEATURE_DIM = 128


def infopro_weights(lambdas: tuple[float, ...] | list[float], index: int, num_modules: int) -> tuple[float, float]:
    """(lambda1, lambda2) of module `index` (0-based) of `num_modules`: (a1, a2, b1, b2) = `lambdas` are those of
    the first module and of the module before the last, interpolated with ratio index / (K - 2) (0 when K = 2),
    as in Wang et al. 2021, appendix. Raises ValueError for the last module, which has no InfoPro loss."""
    if not 0 <= index < num_modules - 1:
        raise ValueError(f"module {index + 1} of {num_modules} has no InfoPro weights (the last trains on "
                         "cross-entropy)")
    first1, first2, last1, last2 = lambdas
    ratio = index / (num_modules - 2) if num_modules > 2 else 0.0
    return first1 * (1 - ratio) + last1 * ratio, first2 * (1 - ratio) + last2 * ratio


def supervised_contrastive(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """The supervised contrastive loss L^sup_out of Khosla et al. (NeurIPS 2020, eq. 2), one view per sample.

    `z`: N x D features (L2-normalised here, so the loss is invariant to their positive scaling); `y`: N labels.
    For anchor i with positives P(i) = {p != i : y_p = y_i}:
    l_i = -1/|P(i)| sum_p log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) ); the loss is the mean of l_i over
    all N anchors, an anchor without positives counting 0 (as InfoPro's code does). Computed in float32.
    """
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    per_anchor = torch.where(positives, log_prob, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return -per_anchor.mean()


class InfoPro(ReadoutObjective):
    """{"recon": lambda1 * L_recon, "task": lambda2 * L_task, "readout": cross-entropy of the auxiliary net on the
    detached output} for modules 1..K-1; {"ce": cross-entropy of the net's classifier} for the last.

    `forward` needs the input images `x` (N x C_in x H_in x W_in, normalized with the spec's mean and std). Owns,
    on modules 1..K-1, `decoder` and `task_head`. Raises ValueError when the spec lacks the output or image shape,
    and from `forward` when it lacks the normalization or `x`.
    """

    needs_input: ClassVar[bool] = True
    contrast: ClassVar[bool] = False
    local_term_names = ("recon", "task")

    def __init__(self, spec: ModuleSpec, infopro_lambdas: tuple[float, ...] | list[float] = (5.0, 1.0, 0.0, 1.0),
                 contrast_temperature: float = 0.07) -> None:
        super().__init__(spec)
        self.temperature = contrast_temperature
        if spec.last:
            return
        if spec.out_shape is None or spec.image_shape is None:
            raise ValueError(f"infopro needs the output shape of module {spec.index + 1} and the input image shape; "
                             "build the stages with GreedyBuilder.for_run")
        self.lambda_recon, self.lambda_task = infopro_weights(infopro_lambdas, spec.index, spec.num_modules)
        chans, in_chans = spec.out_shape[0], spec.image_shape[0]
        self.decoder = nn.Sequential(
            nn.Conv2d(chans, DECODER_WIDTH, 3, padding=1), nn.BatchNorm2d(DECODER_WIDTH), nn.ReLU(),
            nn.Conv2d(DECODER_WIDTH, in_chans, 3, padding=1))  # the sigmoid is in the loss (BCE with logits)
        width = 2 * chans
        self.task_head = nn.Sequential(
            nn.Conv2d(chans, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, FEATURE_DIM), nn.ReLU(),
            nn.Linear(FEATURE_DIM, FEATURE_DIM if self.contrast else spec.num_classes))
        stats = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("mean", stats(spec.mean), persistent=False)
        self.register_buffer("std", stats(spec.std), persistent=False)

    def reconstruction(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L_recon: binary cross-entropy of sigmoid(decoder(upsampled h)) against x de-normalised to [0, 1]
        (computed from the decoder's logits, which is the same value and stable under autocast)."""
        if self.mean is None or self.std is None:
            raise ValueError("infopro reconstructs the input de-normalised, but the normalization of the images is "
                             "not known; build the stages with GreedyBuilder.for_run (or mean=..., std=...)")
        up = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=True)
        target = (x.float() * self.std + self.mean).clamp(0, 1)
        return F.binary_cross_entropy_with_logits(self.decoder(up).float(), target)

    def task(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_task: cross-entropy of the task head's logits (infopro_ce)."""
        return F.cross_entropy(self.task_head(h), y)

    def local_terms(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if x is None:
            raise ValueError(f"{type(self).__name__} of module {self.spec.index + 1} needs the input images; the "
                             "trainer hands them to objectives with needs_input")
        return {"recon": self.lambda_recon * self.reconstruction(h, x), "task": self.lambda_task * self.task(h, y)}


@OBJECTIVES.register("infopro_ce")
class InfoProCE(InfoPro):
    """InfoPro with the task loss as cross-entropy ("InfoPro (softmax)" in Wang et al. 2021, Table 2)."""


@OBJECTIVES.register("infopro_contrast")
class InfoProContrast(InfoPro):
    """InfoPro with the supervised contrastive task loss ("InfoPro (contrast)" in Wang et al. 2021, Table 2)."""

    contrast: ClassVar[bool] = True

    def task(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_task: supervised contrastive loss of the task head's 128-d features."""
        return supervised_contrastive(self.task_head(h), y, self.temperature)
