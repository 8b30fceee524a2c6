"""Chen et al. 2021, "Cross-Layer Distillation with Semantic Calibration" (AAAI), re-implemented from the
formulas (the authors' repository has no licence).

Every student stage ``feats[1:-1]`` (i) is regressed onto every teacher stage (j) by its own AAEmbed; per
sample, an attention ``att[b, i, j]`` (models/util.py:SelfA: query/key MLPs on each layer's BxB Gram matrix,
softmax over j with temperature ``-s/--soft``) says how much each pair counts::

    L = sum_{b,i,j} att[b, i, j] * mean_CHW((R_ij(f^s_i) - f^t_j)^2)[b] / (B * s_len)

The attention MLPs are as wide as the (per-process) batch, so every batch must be full: ``drop_last``.
"""
from __future__ import annotations

import torch

from models.util import SelfA

from . import register
from .base import Distiller, refuse


def semckd_loss(proj: list, targets: list, att: torch.Tensor) -> torch.Tensor:
    """``proj[i][j]``/``targets[i][j]``: (B, C, H, W) maps; ``att``: (B, s_len, t_len)."""
    bsz, s_len, t_len = att.shape
    per_pair = torch.stack([
        torch.stack([(proj[i][j].float() - targets[i][j].float()).pow(2).flatten(1).mean(1)
                     for j in range(t_len)], 1)
        for i in range(s_len)], 1)                                     # B, s_len, t_len
    return (att.float() * per_pair).sum() / (bsz * s_len)


@register("semckd")
class SemCKD(Distiller):
    needs = frozenset({"feats"})
    drop_last = True
    recommended = "-c 1 -d 1 -b 400"   # SemCKD README, CIFAR-100 (its ImageNet runs use -b 50)

    def __init__(self, ctx):
        super().__init__(ctx)
        b = int(ctx.local_batch_size)
        if b < 4:
            refuse(f"semckd's attention MLPs are batch-size wide (B -> B/2 -> B/4); a per-process batch of "
                   f"{b} is too small: use a batch of at least 4 per process")
        self.batch_size = b
        self.soft = float(getattr(ctx.opt, "soft", 1.0))
        s_c = [int(f.shape[1]) for f in ctx.s_probe.feats[1:-1]]
        t_c = [int(f.shape[1]) for f in ctx.t_probe.feats[1:-1]]
        self.self_attention = SelfA(b, s_c, t_c)

    def forward(self, s, t, batch):
        f_s, f_t = s.feats[1:-1], t.feats[1:-1]
        if f_s[0].shape[0] != self.batch_size:
            raise RuntimeError(f"semckd was built for batches of {self.batch_size} per process and got "
                               f"{f_s[0].shape[0]}: its loader must drop the last partial batch (drop_last)")
        proj, targets, att = self.self_attention(f_s, f_t, self.soft)
        return semckd_loss(proj, targets, att)
