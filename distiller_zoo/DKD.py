"""Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR), as mdistiller's ``dkd_loss`` computes it.

KD at temperature T splits into a binary target/non-target part and a part over the non-target classes::

    TCKD = T^2 * KL(b_t || b_s),   b = [p_gt, sum of the other p]         p = softmax(z / T)
    NCKD = T^2 * KL(q_t || q_s),   q = softmax over the non-target classes of z / T
    L    = alpha * TCKD + beta * NCKD            (each KL summed over classes, averaged over the batch)

q is computed as mdistiller does, by shifting the target logit by -1000 before the softmax (its probability
underflows to 0), so the numbers are the same as theirs. T is the loop's ``--kd_T`` (DKD's T is the
temperature of the KD loss it decomposes; with ``--logit_stand`` it is LS's base temperature, one flag
for both). ``--logit_stand`` z-scores both logits first, as the LS repository's DKD does.

Published (mdistiller, CIFAR-100): ``-c 1 -d 0 -b 1``, alpha 1, beta 8 for resnet32x4 -> resnet8x4 (6 for
wrn_40_2 -> wrn_16_2 and vgg13 -> vgg8), T 4, the loss ramped by ``min(epoch / 20, 1)``: that warm-up is
the loop's ``--beta_warmup`` (default 20 for dkd, from :attr:`DKD.defaults`). ImageNet: beta 0.5, T 1,
``--beta_warmup 1``. With ``--strong_aug`` the term is summed over both views, as the loop's CE and KD.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse
from .KD import standardize, view_pairs


def dkd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, targets: torch.Tensor, alpha: float, beta: float,
             T: float, stand: bool = False) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD of one batch (float32; ``stand``: logit standardisation first)."""
    s, t = (standardize(logits_s), standardize(logits_t)) if stand else (logits_s.float(), logits_t.float())
    gt = F.one_hot(targets, s.size(1)).to(s.dtype)
    p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    n = s.size(0)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T ** 2 / n
    log_q_s = F.log_softmax(s / T - 1000.0 * gt, dim=1)
    q_t = F.softmax(t / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T ** 2 / n
    return alpha * tckd + beta * nckd


@register("dkd")
class DKD(Distiller):
    needs = frozenset()
    recommended = "-c 1 -d 0 -b 1 --dkd_beta 8"   # mdistiller configs/cifar100/dkd (beta 6: wrn_16_2, vgg8)
    defaults = {"beta_warmup": 20}                # mdistiller: min(epoch / 20, 1) on the DKD loss

    @classmethod
    def add_arguments(cls, p):
        g = p.add_argument_group("dkd")
        g.add_argument("--dkd_alpha", type=float, default=1.0, help="weight of TCKD (target vs non-target)")
        g.add_argument("--dkd_beta", type=float, default=8.0,
                       help="weight of NCKD (non-target classes): 8 for resnet8x4, 6 for wrn_16_2/vgg8, "
                            "0.5 on ImageNet (mdistiller)")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        if getattr(opt, "mixup", 0) > 0:
            refuse("dkd splits each image's distribution at its target class; --mixup gives an image two "
                   "targets: drop --mixup")
        if opt.kd_T <= 0:
            refuse(f"dkd: --kd_T {opt.kd_T} must be > 0 (DKD's temperature: 4 on CIFAR, 1 on ImageNet)")
        self.alpha, self.beta, self.T = opt.dkd_alpha, opt.dkd_beta, opt.kd_T
        self.stand = bool(getattr(opt, "logit_stand", False))

    def forward(self, s, t, batch):
        return sum(dkd_loss(zs, zt, batch.targets, self.alpha, self.beta, self.T, self.stand)
                   for zs, zt in view_pairs(s, t))
