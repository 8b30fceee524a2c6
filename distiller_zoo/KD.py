"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

The KD term is the loop's ``div`` term (``-d/--div``), present for every method, so ``--distill kd``
adds no loss of its own: ``python train_student.py --distill kd -c 0.1 -d 0.9`` is RepDistiller's KD.
"""
import torch
import torch.nn.functional as F

from . import register
from .base import Distiller


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): per-sample z-score ``(z - mean) / (std + 1e-7)``
    over the classes, with the unbiased (n - 1) standard deviation of torch.std, as the authors' code."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-7)


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, T, stand: bool = False) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch.

    ``stand``: both logits z-scored first (``--logit_stand``; then ``T`` is LS's base temperature).
    ``T`` may be a tensor (a learned temperature, CTKD). Computed in float32 (log-softmax of bf16 logits
    loses the small probabilities KD transfers).
    """
    s, t = (standardize(logits_s), standardize(logits_t)) if stand else (logits_s.float(), logits_t.float())
    log_p_s = F.log_softmax(s / T, dim=1)
    log_p_t = F.log_softmax(t / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def view_pairs(s, t) -> list:
    """``(student logits, teacher logits)`` of each view of the batch: the weak one and, under
    ``--strong_aug``, the strong one. A logit method sums its own term over them, as the loop sums its CE
    and KD terms."""
    pairs = [(s.logits, t.logits)]
    if s.strong is not None and t.strong is not None:
        pairs.append((s.strong.logits, t.strong.logits))
    return pairs


@register("kd")
class KD(Distiller):
    """Logit distillation only: the loop's div term carries it."""
    needs = frozenset()
    has_loss = False
    recommended = "-c 0.1 -d 0.9 -b 0"

    def forward(self, s, t, batch):
        raise RuntimeError("kd has no beta term; the loop's div term is the KD loss")
