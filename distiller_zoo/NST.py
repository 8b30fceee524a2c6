"""Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (NST).

For every stage pair ``feats[1:-1]`` (paired in order, the longer list cut, as RepDistiller's ``zip``;
the larger map average-pooled to the smaller size), each channel's spatial vector (length H*W) is
L2-normalised; with the polynomial kernel ``k(a, b) = (a . b)^2`` between channels of one sample, the
squared MMD is ``mean K_tt + mean K_ss - 2 mean K_st`` (means over batch and channel pairs; channel
counts may differ), summed over the pairs. This is RepDistiller's full loss (``full_loss=True``).

No init stage: the design notes list NST among the init-stage methods, but RepDistiller trains NST
jointly (no pre-training in helper/pretrain.py, and its published NST rows come from joint training),
so this class declares none.

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 50``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .AT import align_spatial, check_maps, stage_pairs
from .base import Distiller


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over (batch, channel i of a, channel j of b) of (a_i . b_j)^2; a, b: (B, C, N)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    f_s, f_t = align_spatial(f_s.float(), f_t.float())
    a_s = F.normalize(f_s.flatten(2), dim=2)
    a_t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel_mean(a_t, a_t) + poly_kernel_mean(a_s, a_s) - 2.0 * poly_kernel_mean(a_s, a_t)


@register("nst")
class NST(Distiller):
    """NST (polynomial-kernel MMD) on every stage pair; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 50"

    def __init__(self, ctx):
        super().__init__(ctx)
        check_maps("nst", ctx.s_probe.feats, ctx.t_probe.feats)

    def forward(self, s, t, batch):
        loss = 0.0
        with torch.autocast(s.feats[1].device.type, enabled=False):  # kernels in float32 under --amp
            for f_s, f_t in stage_pairs(s.feats, t.feats):
                loss = loss + nst_mmd(f_s, f_t)
        return loss
