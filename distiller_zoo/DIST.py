"""Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST, NeurIPS).

Relations instead of exact probabilities: with ``y = softmax(z / tau)`` for a batch (B x C),

    inter = 1 - mean_i  pearson(y_s[i, :], y_t[i, :])     each sample's correlation over the classes
    intra = 1 - mean_c  pearson(y_s[:, c], y_t[:, c])     each class's correlation over the batch
    L     = tau^2 * (beta * inter + gamma * intra)

with ``pearson(a, b) = <a - mean a, b - mean b> / (|a - mean a| |b - mean b| + 1e-8)``, as the authors'
``dist_kd.py`` (hunto/image_classification_sota; its ImageNet loss is the tau = 1 case) with the paper's
tau^2 factor for tau != 1. The intra-class term is a statistic of the whole batch: each process of a DDP run
correlates over its own batch.

Published: ``-c 1 -d 0 -b 2``, beta = gamma = 1, tau 4 on CIFAR-100, tau 1 on ImageNet. ``--dist_tau``
defaults to the loop's ``--kd_T`` (4), so a script that sets ``--kd_T 1`` for ImageNet's logit methods sets
DIST's tau too; give ``--dist_tau`` to keep a separate temperature when DIST is combined with ``-d``.
``--logit_stand`` is not applied to this term (LS was not defined or evaluated for DIST's correlations; it
still standardises the loop's ``-d`` term). With ``--strong_aug`` the term is summed over both views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse
from .KD import view_pairs


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, tau: float, beta: float = 1.0,
              gamma: float = 1.0) -> torch.Tensor:
    y_s = F.softmax(logits_s.float() / tau, dim=1)
    y_t = F.softmax(logits_t.float() / tau, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


@register("dist")
class DIST(Distiller):
    needs = frozenset()
    recommended = "-c 1 -d 0 -b 2"   # DIST: CE 1, KD weight 2, beta = gamma = 1, tau 4 (CIFAR) / 1 (ImageNet)

    @classmethod
    def add_arguments(cls, p):
        g = p.add_argument_group("dist")
        g.add_argument("--dist_beta", type=float, default=1.0, help="weight of the inter-class relation")
        g.add_argument("--dist_gamma", type=float, default=1.0, help="weight of the intra-class relation")
        g.add_argument("--dist_tau", type=float, default=None,
                       help="DIST's temperature (default: --kd_T; published 4 on CIFAR, 1 on ImageNet)")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.tau = opt.kd_T if opt.dist_tau is None else opt.dist_tau
        if self.tau <= 0:
            refuse(f"dist: temperature {self.tau} must be > 0 (--dist_tau, or --kd_T when it is not given)")
        if ctx.local_batch_size < 2:
            refuse(f"dist correlates each class over the batch: a per-process batch of {ctx.local_batch_size} "
                   "has nothing to correlate; use --batch_size >= 2 per process")
        self.beta, self.gamma = opt.dist_beta, opt.dist_gamma

    def forward(self, s, t, batch):
        return sum(dist_loss(zs, zt, self.tau, self.beta, self.gamma) for zs, zt in view_pairs(s, t))
