"""Zhou et al. 2024, "Rethinking Centered Kernel Alignment in Knowledge Distillation" (Relation CKA, IJCAI).

RCKA aligns the *relations* the logits carry, with the authors' CKA on the logits of a batch (z: B x C):

    sample relations  K = z_t z_t^T, L = z_s z_s^T   (B x B: how the samples of the batch relate)
    class relations   K = z_t^T z_t, L = z_s^T z_s   (C x C: how the classes relate over the batch)
    CKA(K, L) = <K', L'>_F / (||K'||_F ||L'||_F),     K' = K with row i divided by sqrt(K_ii)

    L_rcka = (1 - CKA_samples) + --rcka_class_weight * (1 - CKA_classes)

Unlike helper/cka.py (the project's CKA, Kornblith et al.), the authors' estimator does **not** centre
the Grams: it is the cosine of the two uncentred linear Grams (on column-centred inputs, without the row
normalisation, it is exactly helper.cka's biased linear CKA; tests/test_losses_feature_modern.py checks
this). Their classification code divides each Gram row by the norm of its sample (``with_l2_norm=True``,
the default there; ``--rcka_no_row_norm`` drops it, their detection code's setting) and minimises ``-CKA``;
``1 - CKA`` here has the same gradient and is 0 at perfect alignment. The Grams are the uncentred
``helper.cka.gram`` (float32, autocast off).

Weights: the authors' CIFAR-100 script (Klayand/Distill_Knowledge, icme_main.py) trains CE + 15 * each
term, i.e. ``-c 1 -d 0 -b 15`` with ``--rcka_class_weight 1``. CKA is a batch statistic: under DDP each
rank relates the samples of its local batch (batch_size / world_size).
"""
from __future__ import annotations

import torch

from helper.cka import gram

from . import register
from .base import Distiller, refuse

EPS = 1e-12


def relation_cka(x: torch.Tensor, y: torch.Tensor, row_norm: bool = True) -> torch.Tensor:
    """The authors' CKA of x (N, P) and y (N, Q): the cosine of their uncentred N x N linear Grams, each
    Gram row i first divided by sqrt(K_ii) when ``row_norm``."""
    gx, gy = gram(x), gram(y)
    if row_norm:
        gx = gx / torch.sqrt(torch.diagonal(gx).clamp_min(EPS))[:, None]
        gy = gy / torch.sqrt(torch.diagonal(gy).clamp_min(EPS))[:, None]
    norm = torch.linalg.vector_norm(gx).clamp_min(EPS) * torch.linalg.vector_norm(gy).clamp_min(EPS)
    return (gx * gy).sum() / norm


def rcka_loss(z_s: torch.Tensor, z_t: torch.Tensor, class_weight: float = 1.0, row_norm: bool = True):
    """(1 - CKA of the sample relations) + class_weight * (1 - CKA of the class relations)."""
    loss = 1.0 - relation_cka(z_t, z_s, row_norm)
    if class_weight:
        loss = loss + class_weight * (1.0 - relation_cka(z_t.T, z_s.T, row_norm))
    return loss


@register("rcka")
class RCKA(Distiller):
    """Relation CKA on the logits: sample-relation and class-relation Grams of a batch."""
    needs = frozenset()
    recommended = "-c 1 -d 0 -b 15"

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("rcka")
        g.add_argument("--rcka_class_weight", type=float, default=1.0,
                       help="rcka: weight of the class-relation (C x C) term relative to the sample-relation "
                            "(B x B) one, whose weight is -b (authors: 15 and 15; 0 drops the class term)")
        g.add_argument("--rcka_no_row_norm", action="store_true",
                       help="rcka: do not divide each Gram row by its sample's norm (the authors' detection "
                            "setting; their classification code normalises)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.class_weight = float(getattr(ctx.opt, "rcka_class_weight", 1.0))
        self.row_norm = not bool(getattr(ctx.opt, "rcka_no_row_norm", False))
        if self.class_weight < 0:
            refuse(f"--rcka_class_weight {self.class_weight}: give a weight >= 0 (0 drops the class-relation term)")

    def forward(self, s, t, batch):
        return rcka_loss(s.logits, t.logits, self.class_weight, self.row_norm)
