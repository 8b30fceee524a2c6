"""Heo et al. 2019, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons".

As in RepDistiller, AB is an initialisation stage only: for ``--init_epochs`` the student's feature
layers (everything but its classifier) and one connector per stage are trained on the activation-boundary
loss over the pre-activation stage outputs ``preacts[1:-1]``; then the connectors are frozen and the main
stage trains on CE (+ KD) alone: the method's main-stage loss is 0, so ``has_loss`` is False.

Per stage l of n (margin m = 1, s = connector(student preact), t = teacher preact)::

    L_l = w_l * 3/1000 * sum[(s + m)^2 * 1(s > -m and t <= 0) + (s - m)^2 * 1(s <= m and t > 0)] / B
    w_l = 2^(l - n + 1)                    (the last stage weighs 1, each earlier one half the next)
"""
from __future__ import annotations

import torch
from torch import nn

from helper.errors import ConfigError
from models.util import Connector

from . import register
from .base import Distiller, refuse


def ab_layer_loss(s: torch.Tensor, t: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The alternative squared hinge of one stage, summed over every element (batch included)."""
    s, t = s.float(), t.float()
    pos = (s > -margin) & (t <= 0)
    neg = (s <= margin) & (t > 0)
    return ((s + margin).pow(2) * pos + (s - margin).pow(2) * neg).sum()


def ab_loss(g_s: list, g_t: list, margin: float = 1.0) -> torch.Tensor:
    n, bsz = len(g_s), g_s[0].shape[0]
    total = 0.0
    for l, (s, t) in enumerate(zip(g_s, g_t)):
        total = total + 2.0 ** (l - n + 1) * ab_layer_loss(s, t, margin) / bsz * 3 / 1000
    return total


def student_feature_parameters(model_s: nn.Module) -> list:
    """Every parameter of the student except its classifier's (RepDistiller's ``get_feat_modules()``)."""
    model_s = getattr(model_s, "module", model_s)
    head = {id(p) for p in model_s.get_classifier().parameters()}
    return [p for p in model_s.parameters() if id(p) not in head]


def _refreeze_after_load(module, incompatible_keys):
    """A checkpoint written after the init stage restores frozen connectors (one read, at load time)."""
    if bool(module.init_done):
        module.freeze()


@register("abound")
class AB(Distiller):
    needs = frozenset({"preact"})
    has_loss = False
    init_stage = True
    recommended = "-c 1 -d 0 -b 1"   # RepDistiller's script; beta is unused (main-stage loss is 0)
    margin = 1.0

    def __init__(self, ctx):
        super().__init__(ctx)
        s_shapes = [f.shape for f in ctx.s_probe.preacts[1:-1]]
        t_shapes = [f.shape for f in ctx.t_probe.preacts[1:-1]]
        if len(s_shapes) != len(t_shapes):
            refuse(f"abound pairs stages one to one, but the student has {len(s_shapes)} stages and the "
                   f"teacher {len(t_shapes)}; pick models with as many stages or another --distill")
        try:
            self.connector = Connector(s_shapes, t_shapes)
        except ConfigError as e:
            refuse(f"abound: {e}")
        # True once the init stage is over; saved, so a resumed run keeps the connectors frozen
        self.register_buffer("init_done", torch.zeros((), dtype=torch.bool))
        self._frozen = False
        self.register_load_state_dict_post_hook(_refreeze_after_load)

    def init_parameters(self, model_s):
        return list(self.connector.parameters()) + student_feature_parameters(model_s)

    def init_loss(self, s, t, batch):
        return ab_loss(self.connector(s.preacts[1:-1]), t.preacts[1:-1], self.margin)

    def finish_init(self):
        self.init_done.fill_(True)
        self.freeze()

    def freeze(self):
        self._frozen = True
        self.connector.requires_grad_(False)
        self.connector.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen:
            self.connector.eval()   # frozen connectors keep their BN statistics
        return self

    def forward(self, s, t, batch):
        return s.logits.new_zeros((), dtype=torch.float32)
