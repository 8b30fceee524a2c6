"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer" (VID), as in RepDistiller.

For every stage pair ``feats[1:-1]`` (paired in order, the longer list cut, as RepDistiller's ``zip``):
the larger map is average-pooled to the smaller size; a regressor
``mu = conv1x1(C_s -> C_t), ReLU, conv1x1(C_t -> C_t), ReLU, conv1x1(C_t -> C_t)`` (no biases;
RepDistiller builds it with mid channels = C_t) predicts the teacher map; a per-channel variance
``var_c = softplus(alpha_c) + eps`` (eps 1e-5) has alpha initialised so that var = 5. The loss is the
Gaussian negative log-likelihood up to a constant, ``mean(0.5 * ((mu - f_t)^2 / var + log var))`` over
batch, channels and positions, summed over the pairs. It can be negative (log var < 0): its minimum is
not zero.

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 1``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .AT import align_spatial, check_maps, stage_pairs
from .base import Distiller


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VIDPair(nn.Module):
    """One stage pair: the mean regressor and the per-channel log-scale of the variance."""

    def __init__(self, c_s: int, c_t: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(conv1x1(c_s, c_t), nn.ReLU(), conv1x1(c_t, c_t), nn.ReLU(), conv1x1(c_t, c_t))
        # softplus(alpha) + eps = init_var  <=>  alpha = log(exp(init_var - eps) - 1)
        self.log_scale = nn.Parameter(torch.full((c_t,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale.float()) + self.eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = align_spatial(f_s, f_t)
        mu = self.regressor(f_s).float()
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((mu - f_t.float()).pow(2) / var + var.log())).mean()


@register("vid")
class VID(Distiller):
    """VID with one trainable regressor + variance per stage pair."""
    recommended = "-c 1 -d 0 -b 1"

    def __init__(self, ctx):
        super().__init__(ctx)
        check_maps("vid", ctx.s_probe.feats, ctx.t_probe.feats)
        self.pairs = nn.ModuleList(VIDPair(fs.shape[1], ft.shape[1])
                                   for fs, ft in stage_pairs(ctx.s_probe.feats, ctx.t_probe.feats))

    def forward(self, s, t, batch):
        loss = 0.0
        for module, (f_s, f_t) in zip(self.pairs, stage_pairs(s.feats, t.feats)):
            loss = loss + module(f_s, f_t)
        return loss
