"""Cosine-embedding feature distillation (seeds/004, "Cosine Loss Minimization").

The last stage maps ``feats[-2]`` of student and teacher are flattened per sample and compared with
``nn.CosineEmbeddingLoss`` at target +1, i.e. ``mean_b (1 - cos(flatten(f_s)_b, flatten(f_t)_b))``
(margin irrelevant for target +1). When the two lengths differ, the longer vector is average-pooled
over consecutive elements by the integer ratio (``avg_pool1d``, as the seed pooled its VGG9 teacher's
512x2x2 = 2048 values to the VGG5 student's 256x2x2 = 1024); a non-integer ratio is refused.
No trainable parameters.

seeds/004 trained ``0.5 * CE + 0.5 * cosine`` (no KD term), which is ``-c 0.5 -d 0 -b 0.5`` here.
Not in RepDistiller, so these are the seed's weights, not a RepDistiller protocol row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse


def pool_to_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Average consecutive groups of ``x.shape[1] // length`` elements of each row of x (B, D)."""
    ratio = x.shape[1] // length
    return x if ratio == 1 else F.avg_pool1d(x.unsqueeze(1), ratio).squeeze(1)


@register("cosine")
class Cosine(Distiller):
    """1 - cosine similarity between the flattened last stage maps."""
    recommended = "-c 0.5 -d 0 -b 0.5"

    def __init__(self, ctx):
        super().__init__(ctx)
        if len(ctx.s_probe.feats) < 2 or len(ctx.t_probe.feats) < 2:
            refuse("--distill cosine needs feats[-2] (the last stage map) from both models; "
                   "their feature lists are too short")
        d_s, d_t = ctx.s_probe.feats[-2][0].numel(), ctx.t_probe.feats[-2][0].numel()
        longer, shorter = max(d_s, d_t), min(d_s, d_t)
        if longer % shorter:
            refuse(f"--distill cosine: flattened feats[-2] have {d_s} (student) and {d_t} (teacher) values, "
                   "not an integer ratio, so the longer cannot be average-pooled to the shorter; "
                   "use --distill hint or similarity for this pair")
        self.length = shorter

    def forward(self, s, t, batch):
        with torch.autocast(s.feats[-2].device.type, enabled=False):  # float32 under --amp
            x_s = pool_to_length(s.feats[-2].float().flatten(1), self.length)
            x_t = pool_to_length(t.feats[-2].float().flatten(1), self.length)
            return (1.0 - F.cosine_similarity(x_s, x_t, dim=1)).mean()
