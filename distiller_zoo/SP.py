"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (SP).

On the last stage map ``feats[-2]`` flattened to F (B, D): ``G = F F^T`` (B x B), each row
L2-normalised; ``L = ||G_t - G_s||_F^2 / B^2``. Channel counts and spatial sizes may differ: only
the B x B Gram matrices are compared. (RepDistiller normalises the Gram matrix, not the features:
RepDistiller#45.)

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 3000``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse


def similarity_gram(f: torch.Tensor) -> torch.Tensor:
    """Row-normalised B x B Gram matrix of the flattened features, in float32."""
    x = f.float().flatten(1)
    return F.normalize(x @ x.t(), dim=1)


@register("similarity")
class Similarity(Distiller):
    """SP on feats[-2]; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 3000"

    def __init__(self, ctx):
        super().__init__(ctx)
        if len(ctx.s_probe.feats) < 2 or len(ctx.t_probe.feats) < 2:
            refuse("--distill similarity needs feats[-2] (the last stage map) from both models; "
                   "their feature lists are too short")

    def forward(self, s, t, batch):
        with torch.autocast(s.feats[-2].device.type, enabled=False):  # Gram products in float32 under --amp
            g_s, g_t = similarity_gram(s.feats[-2]), similarity_gram(t.feats[-2])
            b = g_s.shape[0]
            return (g_t - g_s).pow(2).sum() / (b * b)
