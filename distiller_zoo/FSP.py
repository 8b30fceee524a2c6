"""Yim et al. 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning" (flow of solution procedure).

As in RepDistiller, FSP is an initialisation stage only: for ``--init_epochs`` the student's feature
layers (everything but its classifier) are trained to match the teacher's FSP matrices, then the main
stage trains on CE (+ KD) alone (main-stage loss 0, ``has_loss`` False). Over ``feats[:-1]``::

    G_i = mean_HW(f_i (x) f_{i+1})            a (B, C_{i+1}, C_i) matrix per consecutive pair
    L   = sum_i mean((G_i^s - G_i^t)^2)

where the larger of f_i, f_{i+1} is average-pooled to the other's size. The matrices of student and
teacher must have the same shape, so every stage must have the same channel count in both networks
(wrn_40_2 -> wrn_40_1 and every cross-architecture pair are refused, the N/A cells of RepDistiller's table).
"""
from __future__ import annotations

import torch

from models.util import pool_to_smaller

from . import register
from .AB import student_feature_parameters
from .base import Distiller, refuse


def fsp_matrices(feats: list) -> list:
    out = []
    for bot, top in zip(feats[:-1], feats[1:]):
        bot, top = pool_to_smaller(bot.float(), top.float())
        b = bot.flatten(2)                                   # B, C_i, HW
        tp = top.flatten(2)                                  # B, C_{i+1}, HW
        out.append(torch.bmm(tp, b.transpose(1, 2)) / b.shape[2])
    return out


def fsp_loss(feats_s: list, feats_t: list) -> torch.Tensor:
    return sum((gs - gt).pow(2).mean() for gs, gt in zip(fsp_matrices(feats_s), fsp_matrices(feats_t)))


@register("fsp")
class FSP(Distiller):
    needs = frozenset({"feats"})
    has_loss = False
    init_stage = True
    recommended = "-c 1 -d 0 -b 50"   # RepDistiller's script; beta is unused (main-stage loss is 0)

    def __init__(self, ctx):
        super().__init__(ctx)
        s_c = [int(f.shape[1]) for f in ctx.s_probe.feats[:-1]]
        t_c = [int(f.shape[1]) for f in ctx.t_probe.feats[:-1]]
        if s_c != t_c:
            refuse(f"fsp needs the same channel count at every stage, but the student has {s_c} and the "
                   f"teacher {t_c}; use a same-width pair (e.g. resnet56 -> resnet20) or another --distill")

    def init_parameters(self, model_s):
        return student_feature_parameters(model_s)

    def init_loss(self, s, t, batch):
        return fsp_loss(s.feats[:-1], t.feats[:-1])

    def forward(self, s, t, batch):
        return s.logits.new_zeros((), dtype=torch.float32)
