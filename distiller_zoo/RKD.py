"""Park et al. 2019, "Relational Knowledge Distillation" (RKD), as in RepDistiller.

On the pooled vectors ``feats[-1]`` (dimensions may differ), flattened to (B, D):

* distance term: pairwise Euclidean distances (diagonal 0), each matrix divided by the mean of its
  positive entries, then ``smooth_l1`` (Huber, beta 1, mean over B^2 entries);
* angle term: for every anchor j, the cosines between ``normalize(x_i - x_j)`` and
  ``normalize(x_k - x_j)`` over all B^3 triplets (degenerate ones give 0), then ``smooth_l1``.

``L = w_d * L_dist + w_a * L_angle`` with w_d = 25, w_a = 50 (``--rkd_w_dist``, ``--rkd_w_angle``).
Distances are ``sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12))`` as in RepDistiller, so two equal
samples sit 1e-6 apart rather than at 0. Teacher terms carry no gradient (teacher outputs arrive detached).

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """B x B Euclidean distances with a zero diagonal (no gradient flows through the diagonal)."""
    sq = x.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())).clamp(min=eps)
    off_diag = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.where(off_diag, d2.sqrt(), torch.zeros_like(d2))


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


def triplet_angles(x: torch.Tensor) -> torch.Tensor:
    """(B, B, B) cosines: [j, i, k] = <normalize(x_i - x_j), normalize(x_k - x_j)>."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)   # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


@register("rkd")
class RKD(Distiller):
    """RKD distance + angle on feats[-1]; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 1"

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("rkd")
        g.add_argument("--rkd_w_dist", type=float, default=25.0, help="RKD: weight of the distance term (25)")
        g.add_argument("--rkd_w_angle", type=float, default=50.0, help="RKD: weight of the angle term (50)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.w_dist = float(getattr(ctx.opt, "rkd_w_dist", 25.0))
        self.w_angle = float(getattr(ctx.opt, "rkd_w_angle", 50.0))

    def forward(self, s, t, batch):
        x_s, x_t = s.feats[-1].float().flatten(1), t.feats[-1].float().flatten(1)
        if x_s.shape[0] < 2:  # no pair to relate (a last batch of one): zero, graph kept for DDP
            return x_s.sum() * 0.0
        with torch.autocast(x_s.device.type, enabled=False):  # distances and cosines in float32 under --amp
            loss_d = F.smooth_l1_loss(normalized_distances(x_s), normalized_distances(x_t))
            loss_a = F.smooth_l1_loss(triplet_angles(x_s), triplet_angles(x_t))
        return self.w_dist * loss_d + self.w_angle * loss_a
