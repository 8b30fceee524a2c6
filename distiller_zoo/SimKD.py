"""Chen et al. 2022, "Knowledge Distillation with the Reused Teacher Classifier" (CVPR), re-implemented from
the formulas (the authors' repository has no licence).

A projector P (1x1 conv s -> t/f, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv -> t, BN, ReLU; ``-f/--factor``,
default 2) maps the student's last stage map ``feats[-2]`` onto the teacher's (the larger of the two maps
average-pooled to the smaller's size first)::

    L = MSE(P(f_s), f_t)          logits(s) = cls_t(avgpool(P(f_s)))

The student predicts through the teacher's classifier, in training (accuracy) and in validation; the loop's
CE and KD terms (``-c``, ``-d``) see the student's own classifier, as in SimKD's code: ``cls_t`` is a frozen
copy of it (no gradient) stored in the distiller, so the student checkpoint plus the distiller's state is a
complete classifier without the teacher file. Published setting ``-c 0 -d 0 -b 1``: the student's own
classifier is then never trained (do not reuse such a student's ``model`` alone).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.util import SimKDProjector

from . import register
from .base import Distiller, refuse
from .SRRL import frozen_classifier


@register("simkd")
class SimKD(Distiller):
    needs = frozenset({"feats"})
    logits_need_feats = True
    recommended = "-c 0 -d 0 -b 1"   # SimKD README / scripts

    def __init__(self, ctx):
        super().__init__(ctx)
        f_s, f_t = ctx.s_probe.feats[-2], ctx.t_probe.feats[-2]
        s_n, t_n = int(f_s.shape[1]), int(f_t.shape[1])
        factor = int(getattr(ctx.opt, "factor", 2))
        if factor < 1 or t_n // factor < 1:
            refuse(f"simkd -f/--factor must be between 1 and the teacher's width {t_n}, got {factor}")
        self.cls_t = frozen_classifier(ctx.model_t)
        if self.cls_t.in_features != t_n:
            refuse(f"simkd reuses the teacher's classifier ({self.cls_t.in_features} inputs) on pooled maps of "
                   f"the teacher's feats[-2] width {t_n}; this teacher's classifier does not read that stage")
        self.projector = SimKDProjector(s_n, t_n, factor)
        # spatial alignment fixed from the probe: the student map is pooled only if it is the larger one
        self.s_h, self.t_h = int(f_s.shape[2]), int(f_t.shape[2])
        self._cache = None   # (student map, its projection): one projector pass per step for loss + logits

    def _source(self, f_s, t_hw=None):
        if t_hw is None:   # validation: the teacher size scales with the input like the student's
            if self.s_h <= self.t_h:
                return f_s
            h = max(1, round(f_s.shape[2] * self.t_h / self.s_h))
            w = max(1, round(f_s.shape[3] * self.t_h / self.s_h))
            t_hw = (h, w)
        if f_s.shape[2] > t_hw[0]:
            return F.adaptive_avg_pool2d(f_s, t_hw)
        return f_s

    def project(self, f_s, t_hw=None):
        """P(aligned f_s); computed once per student map and shared by ``logits`` and ``forward``."""
        if self._cache is not None and self._cache[0] is f_s:
            out = self._cache[1]
            self._cache = None
            return out
        out = self.projector(self._source(f_s, t_hw))
        self._cache = (f_s, out)
        return out

    def logits(self, s):
        p = self.project(s.feats[-2])
        return self.cls_t(F.adaptive_avg_pool2d(p, 1).flatten(1))

    def loss_logits(self, s):
        """SimKD's own training loop computes CE and KL (``-c``, ``-d``) on the student's own classifier
        output before replacing it with the projected prediction; with the published ``-c 0 -d 0`` they
        are not used at all."""
        return s.logits

    def forward(self, s, t, batch):
        f_t = t.feats[-2]
        p = self.project(s.feats[-2], tuple(f_t.shape[2:]))
        if f_t.shape[2] > p.shape[2]:
            f_t = F.adaptive_avg_pool2d(f_t, tuple(p.shape[2:]))
        return F.mse_loss(p.float(), f_t.float())

    def after_step(self, s, t, batch):
        self._cache = None
