"""Jin et al. 2023, "Multi-Level Logit Distillation" (CVPR), as its official code computes it
(Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py).

Three alignments of ``p = softmax(z / tau)``, each summed over the temperatures tau in {T, 3, 5, 2, 6}
(T = ``--kd_T``, 4; LS: its base temperature, 2):

    instance  kd(tau) = tau^2 * KL(p_t || p_s), summed over classes, averaged over the batch
    batch     bc(tau) = |p_s p_s^T - p_t p_t^T|_F^2 / B        (B x B sample-similarity matrices)
    class     cc(tau) = |p_s^T p_s - p_t^T p_t|_F^2 / C        (C x C class-similarity matrices)

Masks from the teacher's weak-view probabilities: ``mask`` keeps the samples whose top probability is at
most its 50th percentile over the batch, ``class_mask`` the classes whose summed probability is at most its
50th percentile (linear interpolation, as ``np.percentile``). With a second view (``--strong_aug``, this
method's default; s/t.strong set by the loop) the term is::

    sum_tau [ kd_w(tau) * m + bc_w(tau) * m + cc_w(tau) * m_c ]            weak view
      + kd_s(T) + kd_s(3) + kd_s(5) + kd_w(2) + kd_w(6)                    "strong" sum

Quirks of the official code, reproduced so that our numbers are its numbers:

* each masked term is a batch scalar multiplied by the boolean mask and averaged, i.e. scaled by the
  fraction of the batch the mask keeps (m = mean(mask), m_c = mean(class_mask)), not a per-sample masking;
* the "strong" instance sum uses the weak-view logits at tau = 2 and 6 (unmasked);
* the strong-view class and batch terms are computed there but never added to the loss: they are left out.

Without a second view (``--strong_aug none``, or a loader that serves none) only the weak-view sum is used
(the "strong" sum, including its two weak-view terms, is dropped). ``--logit_stand`` z-scores the logits of
the instance terms only, as the LS repository's MLKD.py does (its class/batch terms use raw logits; the masks
always do).

Weights: the official loss is ``0.1 * (CE_weak + CE_strong) + 0.9 * (every term above)``; the loop's CE term
is summed over both views when a second view is present, so ``-c 0.1 -d 0 -b 0.9`` is exactly that, with
this method returning the unweighted sum. Published CIFAR-100 protocol: lr 0.025 (0.01 for ShuffleNet /
MobileNet), batch 64, 240 epochs, RandAugment(2, 10) second view; LS + MLKD: ``-b 9 --kd_T 2 --logit_stand``
(vgg13 -> vgg8: ``-b 6``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse
from .KD import kd_loss

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)   # after the base temperature, in the official code's order


def batch_level(logits_s: torch.Tensor, logits_t: torch.Tensor, tau: float) -> torch.Tensor:
    """|P_s P_s^T - P_t P_t^T|_F^2 / B: the samples' similarity matrices at temperature tau."""
    p_s, p_t = F.softmax(logits_s.float() / tau, dim=1), F.softmax(logits_t.float() / tau, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / p_s.size(0)


def class_level(logits_s: torch.Tensor, logits_t: torch.Tensor, tau: float) -> torch.Tensor:
    """|P_s^T P_s - P_t^T P_t|_F^2 / C: the classes' co-occurrence matrices at temperature tau."""
    p_s, p_t = F.softmax(logits_s.float() / tau, dim=1), F.softmax(logits_t.float() / tau, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / p_s.size(1)


def confidence_masks(logits_t: torch.Tensor):
    """(sample mask, class mask): teacher confidences at or below their batch median (np.percentile 50)."""
    p = F.softmax(logits_t.float().detach(), dim=1)
    conf = p.max(dim=1).values
    class_conf = p.sum(dim=0)
    return conf <= torch.quantile(conf, 0.5), class_conf <= torch.quantile(class_conf, 0.5)


def mlkd_loss(s_weak: torch.Tensor, t_weak: torch.Tensor, s_strong=None, t_strong=None, T: float = 4.0,
              stand: bool = False) -> torch.Tensor:
    """The official code's KD + cc + bc sum (weights excluded); the strong-view part only when given."""
    mask, class_mask = confidence_masks(t_weak)
    m, m_c = mask.float().mean(), class_mask.float().mean()
    temps = (T,) + EXTRA_TEMPERATURES
    loss = sum((kd_loss(s_weak, t_weak, tau, stand) + batch_level(s_weak, t_weak, tau)) * m
               + class_level(s_weak, t_weak, tau) * m_c for tau in temps)
    if s_strong is not None:
        loss = loss + sum(kd_loss(s_strong, t_strong, tau, stand) for tau in temps[:3]) \
            + sum(kd_loss(s_weak, t_weak, tau, stand) for tau in temps[3:])
    return loss


@register("mlkd")
class MLKD(Distiller):
    needs = frozenset()
    recommended = "-c 0.1 -d 0 -b 0.9"   # MLKD configs/cifar100/ours: CE 0.1, KD 0.9 (and lr 0.025, a protocol flag)
    defaults = {"strong_aug": "randaugment"}                   # its trainer feeds weak + strong views

    def __init__(self, ctx):
        super().__init__(ctx)
        if ctx.opt.kd_T <= 0:
            refuse(f"mlkd: --kd_T {ctx.opt.kd_T} must be > 0 (MLKD's base temperature: 4; with LS: 2)")
        self.T = ctx.opt.kd_T
        self.stand = bool(getattr(ctx.opt, "logit_stand", False))

    def forward(self, s, t, batch):
        strong = s.strong is not None and t.strong is not None
        return mlkd_loss(s.logits, t.logits, s.strong.logits if strong else None,
                         t.strong.logits if strong else None, self.T, self.stand)
