"""Chen et al. 2021, "Distilling Knowledge via Knowledge Review" (ReviewKD, CVPR), as mdistiller runs it.

The student's stage features ``feats[1:]`` (the stages, then the pooled vector as a 1x1 map) are fused
deepest first by attention-based fusion (ABF) modules: level i maps its feature to ``mid`` channels (1x1
conv + BN), blends it with the upsampled fused map of level i+1 through a two-channel sigmoid attention
(1x1 conv on both), resizes to the teacher's spatial size and regresses the teacher's channels (3x3 conv +
BN). Each level's output is compared with the teacher's *pre-activation* feature ``preacts[1:]`` by the
hierarchical context loss (HCL)::

    HCL(f, t) = [mse(f, t) + sum_{k: l_k < H} 2^-k mse(pool_{l_k}(f), pool_{l_k}(t))] / (1 + sum_k 2^-k)

for the pyramid l = 4, 2, 1 (adaptive average pooling; levels no smaller than the map are skipped), summed
over levels. Shapes and channels come from the probes: a pair's lists are aligned from the deepest end
(the pooled vectors pair up, then the last stages, ...), which is what mdistiller's and the authors'
per-pair tables do (resnet32x4 -> resnet8x4: in [64, 128, 256, 256], out [64, 128, 256, 256], shapes
[1, 8, 16, 32] deepest first); ``mid = min(512, C of the student's pooled vector)``.

Published weights: CIFAR-100 ``-c 1 -d 0 -b 5`` with the weight ramped as ``min(epoch / 20, 1)`` over
1-based epochs (the loop's ``--beta_warmup``, this method's default, as mdistiller; the authors' CIFAR code
ramps from epoch 0, one epoch later); the authors' script uses -b 8 for ShuffleV2 students, 0.6 for
resnet56 -> resnet20 and 1 for resnet110 -> resnet32. ImageNet (mdistiller's r34_r18 config):
``-b 1 --beta_warmup 1 --reviewkd_preact`` (the student's pre-activation features, as the authors'
ImageNet models return them; their ImageNet code has no loss warm-up). Under DDP each rank's ABF
BatchNorms see its local batch (as mdistiller).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import Distiller, refuse

MAX_MID_CHANNELS = 512
HCL_LEVELS = (4, 2, 1)


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A (B, C) vector as a (B, C, 1, 1) map; maps unchanged."""
    return f[:, :, None, None] if f.dim() == 2 else f


def hcl_loss(fs: list, ft: list) -> torch.Tensor:
    """Hierarchical context loss, summed over the paired maps (float32)."""
    total = 0.0
    for s, t in zip(fs, ft):
        s, t = s.float(), t.float()
        loss, weight, norm = F.mse_loss(s, t), 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion of one level (the submodule names are mdistiller's, so its weights load)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_hw: tuple):
        """Returns (this level's prediction of the teacher map, the fused map handed to the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=tuple(out_hw), mode="nearest")
        return self.conv2(x), x


def review_plan(s_feats: list, t_feats: list) -> dict:
    """Channels and spatial sizes of the ABF chain from probe features (``[stage1, ..., pooled]``), in
    mdistiller's notation: ``in_channels``/``out_channels`` shallow to deep, ``shapes``/``out_shapes``
    (student / teacher heights) deepest first."""
    n = min(len(s_feats), len(t_feats))
    s, t = [as_map(f) for f in s_feats[-n:]], [as_map(f) for f in t_feats[-n:]]
    return {"in_channels": [int(f.shape[1]) for f in s], "out_channels": [int(f.shape[1]) for f in t],
            "shapes": [int(f.shape[2]) for f in s][::-1], "out_shapes": [int(f.shape[2]) for f in t][::-1],
            "s_hw": [tuple(f.shape[2:]) for f in s], "t_hw": [tuple(f.shape[2:]) for f in t], "n": n}


@register("reviewkd")
class ReviewKD(Distiller):
    """ABF over the student's stages + pooled vector, HCL against the teacher's pre-activation features."""
    # the teacher's features are always pre-activation (mdistiller), so "preact" is always needed; one
    # forward returns both lists (ModelRunner's preact="both"), and the student side picks one per option
    needs = frozenset({"feats", "preact"})
    defaults = {"beta_warmup": 20}
    recommended = "-c 1 -d 0 -b 5"

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("reviewkd")
        g.add_argument("--reviewkd_preact", action="store_true",
                       help="reviewkd: fuse the student's pre-activation stage features (mdistiller's ImageNet "
                            "setting, with -b 1 --beta_warmup 1); default: post-activation (CIFAR)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.student_preact = bool(getattr(ctx.opt, "reviewkd_preact", False))
        s_list = (ctx.s_probe.preacts if self.student_preact else ctx.s_probe.feats)[1:]
        t_list = ctx.t_probe.preacts[1:]
        for who, feats in (("student", s_list), ("teacher", t_list)):
            if len(feats) < 2 or any(f.dim() != 4 for f in feats[:-1]) or feats[-1].dim() not in (2, 4):
                refuse(f"reviewkd needs (C, H, W) stage maps and a pooled vector; the {who}'s stage features have "
                       f"shapes {[tuple(f.shape[1:]) for f in feats]}")
        plan = review_plan(s_list, t_list)
        self.plan = plan
        mid = min(MAX_MID_CHANNELS, plan["in_channels"][-1])
        n = plan["n"]
        # abfs[i] serves level i (shallow to deep); the deepest level has nothing deeper to fuse with
        self.abfs = nn.ModuleList([ABF(c_in, mid, c_out, fuse=i < n - 1) for i, (c_in, c_out)
                                   in enumerate(zip(plan["in_channels"], plan["out_channels"]))])

    def student_features(self, s) -> list:
        feats = (s.preacts if self.student_preact else s.feats)[1:]
        return [as_map(f) for f in feats[-self.plan["n"]:]]

    def forward(self, s, t, batch):
        xs = self.student_features(s)
        targets = [as_map(f) for f in t.preacts[1:][-self.plan["n"]:]]
        t_hw = self.plan["t_hw"]
        out, fused = self.abfs[-1](xs[-1], None, t_hw[-1])
        results = [out]
        for i in range(len(xs) - 2, -1, -1):
            out, fused = self.abfs[i](xs[i], fused, t_hw[i])
            results.insert(0, out)
        return hcl_loss(results, targets)
