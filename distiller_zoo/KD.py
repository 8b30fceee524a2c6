"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

The KD term is the loop's ``div`` term (``-d/--div``), present for every method, so ``--distill kd``
adds no loss of its own: ``python train_student.py --distill kd -c 0.1 -d 0.9`` is RepDistiller's KD.
"""
import torch
import torch.nn.functional as F

from . import register
from .base import Distiller


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch.

    Computed in float32 (log-softmax of bf16 logits loses the small probabilities KD transfers).
    """
    log_p_s = F.log_softmax(logits_s.float() / T, dim=1)
    log_p_t = F.log_softmax(logits_t.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


@register("kd")
class KD(Distiller):
    """Logit distillation only: the loop's div term carries it."""
    needs = frozenset()
    has_loss = False
    recommended = "-c 0.1 -d 0.9 -b 0"

    def forward(self, s, t, batch):
        raise RuntimeError("kd has no beta term; the loop's div term is the KD loss")
