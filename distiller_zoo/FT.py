"""Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer".

Init stage (``--init_epochs``, as RepDistiller): a Paraphraser (autoencoder, rate 0.5) learns to
reconstruct the teacher's last stage map ``f_t = feats[-2]`` (MSE); the student is not trained then.
After it the Paraphraser is frozen, in eval mode. Main stage: a trainable Translator maps the student's
``feats[-2]`` to the factor's width and ::

    L = mean | phi(Translator(f_s)) - phi(Paraphraser.encode(f_t)) |,   phi(x) = l2norm(mean_c(x^2).flatten)

(RepDistiller's p1 = 2, p2 = 1), the larger factor map average-pooled to the smaller one's size first.
The init stage's SGD uses lr 0.01 for resnet/wrn students, as RepDistiller hard-codes.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from models.util import Paraphraser, Translator, pool_to_smaller

from . import register
from .base import Distiller

FT_RATE = 0.5


def factor(x: torch.Tensor) -> torch.Tensor:
    """phi(x): the per-sample map of mean_c(x^2), flattened and L2-normalised."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
    return (factor(factor_s) - factor(factor_t)).abs().mean()


def _refreeze_after_load(module, incompatible_keys):
    if bool(module.init_done):
        module.freeze()


@register("factor")
class FT(Distiller):
    needs = frozenset({"feats"})
    init_stage = True
    recommended = "-c 1 -d 0 -b 200"

    def __init__(self, ctx):
        super().__init__(ctx)
        s_c = ctx.s_probe.feats[-2].shape[1]
        t_c = ctx.t_probe.feats[-2].shape[1]
        self.paraphraser = Paraphraser(t_c, FT_RATE)
        self.translator = Translator(s_c, t_c, FT_RATE)
        self.register_buffer("init_done", torch.zeros((), dtype=torch.bool))
        self._frozen = False
        self.register_load_state_dict_post_hook(_refreeze_after_load)

    # ---- init stage: the paraphraser alone, on reconstruction --------------------------------------
    def init_parameters(self, model_s):
        return list(self.paraphraser.parameters())

    def init_lr(self, opt):
        # RepDistiller (helper/pretrain.py): 0.01 when the student is a CIFAR resnet or a wrn
        name = getattr(opt, "model_s", "") or ""
        if re.fullmatch(r"resnet\d+(x\d+)?|wrn_\d+_\d+", name):
            return 0.01
        return opt.learning_rate

    def init_loss(self, s, t, batch):
        f_t = t.feats[-2]
        _, rec = self.paraphraser(f_t)
        return F.mse_loss(rec.float(), f_t.float())

    def finish_init(self):
        self.init_done.fill_(True)
        self.freeze()

    def freeze(self):
        self._frozen = True
        self.paraphraser.requires_grad_(False)
        self.paraphraser.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen:
            self.paraphraser.eval()
        return self

    # ---- main stage ----------------------------------------------------------------------------
    def forward(self, s, t, batch):
        with torch.no_grad():
            factor_t = self.paraphraser.encode(t.feats[-2])
        return ft_loss(self.translator(s.feats[-2]), factor_t)
