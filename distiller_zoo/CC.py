"""Peng et al. 2019, "Correlation Congruence for Knowledge Distillation" (CC), as in RepDistiller.

Both pooled vectors ``feats[-1]`` go through their own trainable ``LinearEmbed`` to ``--feat_dim``
(128) dimensions; the teacher-side embedding trains too (RepDistiller puts both in the optimiser).
With ``delta = |e_s - e_t|`` the loss is RepDistiller's reduced form, which the CC authors supplied
(RepDistiller#15, "it is MMD"): ``mean_i sum_d delta[i, d] * delta[i+1, d]`` over consecutive samples
of the batch, i = 0 .. B-2. It is not the paper's Taylor-expanded Gaussian-kernel correlation matrix.

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 0.02``.
"""
from __future__ import annotations

from models.util import LinearEmbed

from . import register
from .base import Distiller


@register("correlation")
class Correlation(Distiller):
    """CC with two trainable linear embeddings on feats[-1]."""
    recommended = "-c 1 -d 0 -b 0.02"

    def __init__(self, ctx):
        super().__init__(ctx)
        dim = int(ctx.opt.feat_dim)
        self.embed_s = LinearEmbed(ctx.s_probe.feats[-1][0].numel(), dim)
        self.embed_t = LinearEmbed(ctx.t_probe.feats[-1][0].numel(), dim)

    def forward(self, s, t, batch):
        e_s = self.embed_s(s.feats[-1]).float()
        e_t = self.embed_t(t.feats[-1]).float()
        delta = (e_s - e_t).abs()
        if delta.shape[0] < 2:  # no consecutive pair (a last batch of one): zero, graph kept for DDP
            return delta.sum() * 0.0
        return (delta[:-1] * delta[1:]).sum(1).mean()
