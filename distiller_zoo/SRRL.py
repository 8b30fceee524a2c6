"""Yang et al. 2021, "Knowledge Distillation via Softmax Regression Representation Learning" (ICLR),
as in SimKD's repository (re-implemented from the formula; that repository has no licence).

The student's penultimate vector ``feats[-1]`` goes through h = ReLU(BN(conv1x1_{s->t})) (as a 1x1 map) and
is matched to the teacher's, both directly and through the teacher's frozen classifier::

    L = MSE(h, f_t[-1]) + MSE(cls_t(h), z_t)

``cls_t`` is a frozen copy of the teacher's classifier kept in the distiller (no gradient, in the state_dict).
"""
from __future__ import annotations

import copy

import torch.nn.functional as F

from models.util import SRRLTransfer

from . import register
from .base import Distiller, refuse


def frozen_classifier(model_t):
    """A frozen copy of the teacher's final nn.Linear (never a reference to the teacher's own module)."""
    model_t = getattr(model_t, "module", model_t)
    cls_t = copy.deepcopy(model_t.get_classifier())
    cls_t.requires_grad_(False)
    return cls_t


@register("srrl")
class SRRL(Distiller):
    needs = frozenset({"feats"})
    recommended = "-c 1 -d 1 -b 1"   # SimKD README / scripts

    def __init__(self, ctx):
        super().__init__(ctx)
        s_n = int(ctx.s_probe.feats[-1][0].numel())
        t_n = int(ctx.t_probe.feats[-1][0].numel())
        self.cls_t = frozen_classifier(ctx.model_t)
        if self.cls_t.in_features != t_n:
            refuse(f"srrl feeds the teacher's classifier ({self.cls_t.in_features} inputs) with vectors of the "
                   f"teacher's penultimate width {t_n}; this teacher's classifier does not read feats[-1]")
        self.transfer = SRRLTransfer(s_n, t_n)

    def forward(self, s, t, batch):
        h = self.transfer(s.feats[-1])
        return (F.mse_loss(h.float(), t.feats[-1].flatten(1).float())
                + F.mse_loss(self.cls_t(h).float(), t.logits.float()))
