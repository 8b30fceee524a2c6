"""Lee, Kim & Song 2018, "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (KD-SVD).

As RepDistiller's ``KDSVD`` (itself a port of the authors' TensorFlow code), on the stage maps
``feats[1:-1]`` (paired in order, the longer list cut):

1. **SVD.** Each map (B, C, H, W) is read as B matrices X (H*W x C), one row per position; its right
   singular vectors live in channel space. The teacher keeps its top k (``--kdsvd_k``, 1), the student
   its top k + 3 (``torch.linalg.svd``, float32).
2. **Sign alignment.** A singular vector's sign is arbitrary. For each teacher vector, the student
   vector with the largest |cosine| among its k + 3 is chosen and multiplied by the sign of that
   cosine, so student and teacher vectors point the same way (and a student vector that ranks 2nd,
   say, can stand in for the teacher's 1st).
3. **Weights.** Teacher singular values, L2-normalised over the k kept, scale both the teacher's and
   the aligned student's vectors (for k = 1 this is a factor 1).
4. **RBF between consecutive stages.** For stages l-1, l of one model and kept vector j,
   ``K[c, c'] = exp(-(v_l[c, j] - v_{l-1}[c', j])^2 / 8)`` over channel pairs (a Gaussian RBF with
   2 sigma^2 = 8 between the entries of the two stages' singular vectors). The loss of stage pair
   (l-1, l) is ``sum (K_s - K_t)^2 / B``, non-finite entries dropped; the stage-pair losses are summed.

Because singular vectors are compared channel by channel, student and teacher need **equal channel
counts at every paired stage** (as FSP; spatial sizes may differ): other pairs are refused at build.

Details decided here (documented deviations):

* RepDistiller reshapes with ``H*H`` (square maps only) and keeps every student vector whose |cosine|
  ties the maximum; here ``H*W`` and one arg-max per teacher vector, sign(0) taken as +1.
* The teacher's own signs are arbitrary too (LAPACK's choice, which differs between CPU and GPU
  libraries), and the RBF between two stages depends on them. Here each teacher vector is flipped so
  that its entries sum to >= 0 (for post-ReLU maps the top vector is then the non-negative one), which
  makes the loss the same on every backend. The student follows through step 2.
* SVD gradients blow up when singular values nearly coincide (1 / (s_i^2 - s_j^2)). RepDistiller only
  removes NaNs in the forward pass; here, as the authors' TensorFlow gradient did per sample, a sample
  whose gradient at the student map is not finite gets a zero gradient from this loss.
* Weight: RepDistiller ships KDSVD without a script weight; ``-b 1`` with ``-c 1 -d 0`` is mdistiller's
  default (``KDSVD.LOSS.FEAT_WEIGHT = 1``, K = 1) on the same loss form. The authors' own code instead
  added the distillation gradient clipped to the CE gradient's norm, which has no beta equivalent.

Cost: the RBF tensors hold B * C_l * C_{l-1} * k values per stage pair (64 * 256 * 128 for resnet8x4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .AT import check_maps, stage_pairs
from .base import Distiller, refuse


def _zero_nonfinite_samples(grad: torch.Tensor) -> torch.Tensor:
    ok = torch.isfinite(grad).flatten(1).all(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    return torch.where(ok, grad, torch.zeros_like(grad))


def right_singular_vectors(f: torch.Tensor, n: int, guard: bool = False):
    """Top-n right singular vectors (B, C, n) and their singular values L2-normalised over n (B, n).

    f: (B, C, H, W), viewed as (B, H*W, C). Non-finite values become 0. ``guard``: a sample whose
    gradient coming back through this SVD is not finite gets a zero gradient instead (the hook sits on
    the SVD's own input view, so gradients of other losses through f are untouched).
    """
    x = f.float().flatten(2).transpose(1, 2)
    if guard and x.requires_grad:
        x.register_hook(_zero_nonfinite_samples)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    v = torch.nan_to_num(vh[:, :n].transpose(1, 2), nan=0.0, posinf=0.0, neginf=0.0)
    sv = torch.nan_to_num(sv[:, :n], nan=0.0, posinf=0.0, neginf=0.0)
    return F.normalize(v, dim=1), F.normalize(sv, dim=1)


def align_signs(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector (column of v_t, (B, C, k)), the student column of v_s (B, C, m) with the
    largest |cosine|, multiplied by that cosine's sign. Returns (B, C, k)."""
    cos = v_s.transpose(1, 2) @ v_t                                   # (B, m, k)
    idx = cos.abs().argmax(dim=1)                                     # (B, k)
    picked = torch.gather(v_s, 2, idx.unsqueeze(1).expand(-1, v_s.shape[1], -1))
    sign = torch.where(torch.gather(cos, 1, idx.unsqueeze(1)) >= 0, 1.0, -1.0)   # (B, 1, k)
    return picked * sign


def rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """(B, C, C_prev, k) Gaussian RBF between the entries of two stages' vectors."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8.0)


@register("kdsvd")
class KDSVD(Distiller):
    """KD-SVD: RBF relations between consecutive stages' singular vectors; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 1"

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("kdsvd")
        g.add_argument("--kdsvd_k", type=int, default=1,
                       help="KD-SVD: teacher singular vectors kept per stage (student keeps k + 3; default 1)")

    def __init__(self, ctx):
        super().__init__(ctx)
        n_pairs = check_maps("kdsvd", ctx.s_probe.feats, ctx.t_probe.feats)
        if n_pairs < 2:
            refuse("--distill kdsvd relates consecutive stages, so it needs at least two stage pairs; "
                   f"this pair has {n_pairs}")
        for i, (fs, ft) in enumerate(stage_pairs(ctx.s_probe.feats, ctx.t_probe.feats), start=1):
            if fs.shape[1] != ft.shape[1]:
                refuse(f"--distill kdsvd compares singular vectors channel by channel, so it needs equal channel "
                       f"counts; feats[{i}] has {fs.shape[1]} (student) vs {ft.shape[1]} (teacher) channels: "
                       "use a same-width pair, or nst / attention")
        self.k = int(getattr(ctx.opt, "kdsvd_k", 1))
        rank = min(min(f.shape[1], f.shape[2] * f.shape[3])
                   for pair in stage_pairs(ctx.s_probe.feats, ctx.t_probe.feats) for f in pair)
        if not 1 <= self.k <= rank:
            refuse(f"--kdsvd_k {self.k}: must be between 1 and {rank}, the fewest singular vectors a stage "
                   "map of this pair has (min(C, H*W))")

    def forward(self, s, t, batch):
        with torch.autocast(s.feats[1].device.type, enabled=False):  # SVD and products in float32 under --amp
            return self._loss(s.feats, t.feats)

    def _loss(self, s_feats, t_feats):
        loss, prev = 0.0, None
        for f_s, f_t in stage_pairs(s_feats, t_feats):
            v_t, w_t = right_singular_vectors(f_t, self.k)
            v_t = v_t * torch.where(v_t.sum(1, keepdim=True) >= 0, 1.0, -1.0)   # canonical teacher sign
            v_s, _ = right_singular_vectors(f_s, self.k + 3, guard=True)
            w = w_t.unsqueeze(1)                                          # (B, 1, k)
            v_s, v_t = align_signs(v_s, v_t) * w, v_t * w
            if prev is not None:
                d = (rbf(v_s, prev[0]) - rbf(v_t, prev[1])).pow(2)
                d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
                loss = loss + d.sum() / f_s.shape[0]
            prev = (v_s, v_t)
        return loss
