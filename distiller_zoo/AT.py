"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (attention transfer, AT).

Attention map of a stage output f (B, C, H, W): ``a(f) = normalize(mean_c(f^p).flatten)`` (p = 2),
L2-normalised per sample. Per stage ``mean((a_s - a_t)^2)`` over batch and positions, summed over the
stage outputs ``feats[1:-1]``. This is RepDistiller's (and the authors' official code's) form; the
paper writes a sum over channels and a non-squared norm. When the two maps differ in size, the larger
is average-pooled to the smaller (:func:`align_spatial`). As in RepDistiller, stages are paired in
order and a longer list is cut to the shorter one (``zip``): SemCKD's resnet32x4 -> vgg8 AT row pairs
the teacher's 3 stages with the student's first 3.

``--at_map mean`` is seeds/002's spatial attention: the channel mean of f itself (not of f^2),
L2-normalised, MSE summed over stages (seeds/002 used beta 1000 on ResNet50 -> ResNet18's 4 stages,
the same weight as RepDistiller's AT).

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 1000``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Distiller, refuse


# ---- helpers shared by the stage-wise methods (AT, NST, VID, KDSVD) -------------------------------------

def stage_pairs(s_feats: list, t_feats: list) -> list:
    """(student, teacher) stage outputs ``feats[1:-1]``, paired in order; the longer list is cut."""
    return list(zip(s_feats[1:-1], t_feats[1:-1]))


def check_maps(method: str, s_feats: list, t_feats: list) -> int:
    """Refuse unless both models give at least one 4-D stage map; returns the number of pairs."""
    pairs = stage_pairs(s_feats, t_feats)
    if not pairs:
        refuse(f"--distill {method} needs stage features feats[1:-1]; the student or teacher returns none "
               f"(feats of length {len(s_feats)} / {len(t_feats)}); choose a model with stages")
    for i, (fs, ft) in enumerate(pairs, start=1):
        if fs.dim() != 4 or ft.dim() != 4:
            refuse(f"--distill {method} needs (B, C, H, W) maps at feats[{i}], got student "
                   f"{tuple(fs.shape[1:])} and teacher {tuple(ft.shape[1:])}; use a convolutional pair")
    return len(pairs)


def align_spatial(f_s: torch.Tensor, f_t: torch.Tensor):
    """Average-pool the larger map down to the smaller one's (H, W) (RepDistiller's rule, per axis)."""
    h, w = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
    if f_s.shape[2:] != (h, w):
        f_s = F.adaptive_avg_pool2d(f_s, (h, w))
    if f_t.shape[2:] != (h, w):
        f_t = F.adaptive_avg_pool2d(f_t, (h, w))
    return f_s, f_t


# ---- AT ---------------------------------------------------------------------------------------------------

def attention_map(f: torch.Tensor, p: float = 2.0, mode: str = "power") -> torch.Tensor:
    """(B, H*W) L2-normalised spatial attention: channel mean of f^p ("power") or of f ("mean")."""
    f = f.float()
    a = f.pow(p).mean(1) if mode == "power" else f.mean(1)
    return F.normalize(a.flatten(1), dim=1)


@register("attention")
class Attention(Distiller):
    """AT on every stage output pair; no trainable parameters."""
    recommended = "-c 1 -d 0 -b 1000"

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("attention (AT)")
        g.add_argument("--at_p", type=float, default=2.0, help="AT: power p of the map mean_c(f^p) (default 2)")
        g.add_argument("--at_map", default="power", choices=("power", "mean"),
                       help="AT: 'power' = mean_c(f^p) (RepDistiller); 'mean' = mean_c(f) (seeds/002)")

    def __init__(self, ctx):
        super().__init__(ctx)
        check_maps("attention", ctx.s_probe.feats, ctx.t_probe.feats)
        self.p = float(getattr(ctx.opt, "at_p", 2.0))
        self.mode = getattr(ctx.opt, "at_map", "power")

    def forward(self, s, t, batch):
        loss = 0.0
        for f_s, f_t in stage_pairs(s.feats, t.feats):
            f_s, f_t = align_spatial(f_s.float(), f_t.float())
            a_s = attention_map(f_s, self.p, self.mode)
            a_t = attention_map(f_t, self.p, self.mode)
            loss = loss + (a_s - a_t).pow(2).mean()
        return loss
