"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer" (PKT).

On the pooled vectors ``feats[-1]`` (any dimensions): cosine-similarity matrices C (B x B) mapped to
``P = (C + 1) / 2`` and row-normalised into conditional probabilities; the loss is
``mean(P_t * log((P_t + eps) / (P_s + eps)))`` over all B^2 entries, eps = 1e-7. Each vector is divided
by ``||x|| + eps`` first (RepDistiller / the authors' code), and a NaN left by a zero vector becomes 0.

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 30000``.
"""
from __future__ import annotations

import torch

from . import register
from .base import Distiller

EPS = 1e-7


def pkt_probabilities(f: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Row-stochastic B x B matrix of (cosine + 1) / 2, in float32."""
    x = f.float().flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    x = torch.nan_to_num(x, nan=0.0)
    p = (x @ x.t() + 1.0) / 2.0
    return p / p.sum(dim=1, keepdim=True)


@register("pkt")
class PKT(Distiller):
    """PKT on feats[-1]; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 30000"

    def forward(self, s, t, batch):
        with torch.autocast(s.feats[-1].device.type, enabled=False):  # similarities in float32 under --amp
            p_s, p_t = pkt_probabilities(s.feats[-1]), pkt_probabilities(t.feats[-1])
            return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()
