"""Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation" (OFD, ICCV), as mdistiller runs it.

Distils the teacher's pre-ReLU stage features ``preacts[1:-1]`` through a margin ReLU. Per channel the
margin m is the expectation of the negative part of the teacher's pre-ReLU response, modelled by the
Gaussian of the BatchNorm that produces it (gamma = std, beta = mean): ``m = E[x | x < 0] =
beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|)``, or ``-3 |gamma|`` when ``Phi(-beta/|gamma|) <=
0.001``. A connector (1x1 conv + BN) maps each student pre-ReLU stage to the teacher's channels; the teacher
map is average-pooled to the student's size. The partial L2 distance with target ``max(t, m)`` skips the
elements where the student is already below a non-positive target::

    L = sum_l 2^-(n-1-l) * sum_{C,H,W} mean_B [(s - max(t, m))^2 * 1(s > max(t, m) or t > 0)]

(the last stage weighs 1, each earlier one half the next). The teacher's "BatchNorm before ReLU" of each
stage comes from the model's ``get_bn_before_relu()`` (models/): the BN whose output, plus the residual
shortcut where there is one (mdistiller takes that BN's statistics anyway), is the stage's pre-activation.
Teachers without one (ShuffleNets, the seed CNNs) are refused, as in mdistiller.

Published weights (mdistiller's CIFAR-100 config, CFG.OFD.LOSS): ``-c 1 -d 0 -b 0.001``, no warm-up (the
authors' CIFAR ``loss_distill.sum() / batch_size / 1000`` is the same scale; their ImageNet code divides by
10000: ``-b 0.0001``). Differences from mdistiller: its
OFD puts the *teacher* in train mode (batch statistics in the teacher's BN, running statistics drifting),
here the teacher stays frozen in eval mode like every teacher of this loop; stage lists of unequal length
are aligned from the deepest end for features *and* margins (mdistiller aligns the features only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import Distiller, refuse


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel margin E[x | x < 0] of N(beta, gamma^2), from a BatchNorm's affine parameters."""
    std = bn.weight.detach().double().abs()
    mean = bn.bias.detach().double()
    z = mean / torch.where(std > 0, std, torch.ones_like(std))
    tail = 0.5 * torch.erfc(z / math.sqrt(2.0))                    # Phi(-mean/std)
    gauss = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)     # phi(mean/std)
    margin = torch.where(tail > 0.001, mean - std * gauss / tail.clamp_min(1e-300), -3.0 * std)
    # gamma = 0: the channel is the constant beta, whose negative part is min(beta, 0)
    return torch.where(std > 0, margin, mean.clamp_max(0.0)).float()


def ofd_partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between student ``s`` and the margin-ReLU'd teacher ``max(t, margin)``: summed over
    (C, H, W), averaged over the batch."""
    s, t = s.float(), t.float()
    target = torch.maximum(t, margin)
    mask = (s > target) | (t > 0)
    return ((s - target).pow(2) * mask).mean(dim=0).sum()


def connector(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv + BN, initialised as OFD's (conv weights N(0, 2 / (k*k*c_out)), BN 1 / 0)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


@register("ofd")
class OFD(Distiller):
    needs = frozenset({"preact"})
    recommended = "-c 1 -d 0 -b 0.001"

    def __init__(self, ctx):
        super().__init__(ctx)
        if getattr(ctx.opt, "kd_mode", "offline") != "offline":
            refuse("ofd computes its margins once, from the trained teacher's BatchNorm statistics; with "
                   f"--kd_mode {ctx.opt.kd_mode} the teacher is still training: use --kd_mode offline")
        net_t = getattr(ctx.model_t, "module", ctx.model_t)
        try:
            bns = list(net_t.get_bn_before_relu())
        except (AttributeError, NotImplementedError):
            refuse(f"ofd needs the BatchNorm before each stage's ReLU of the teacher, and {type(net_t).__name__} "
                   "has none (no get_bn_before_relu): use a resnet, wrn, vgg, ResNet or MobileNetV2 teacher")
        s_pre, t_pre = ctx.s_probe.preacts[1:-1], ctx.t_probe.preacts[1:-1]
        t_channels = [int(f.shape[1]) for f in t_pre]
        if [int(bn.num_features) for bn in bns] != t_channels:
            raise RuntimeError(f"{type(net_t).__name__}.get_bn_before_relu() lists BatchNorms of "
                               f"{[bn.num_features for bn in bns]} channels for stages of {t_channels}")
        if any(f.dim() != 4 for f in s_pre):
            refuse(f"ofd distils (C, H, W) stage maps; the student's pre-activation stage features have shapes "
                   f"{[tuple(f.shape[1:]) for f in s_pre]}")
        n = min(len(s_pre), len(t_pre))
        if n == 0:
            refuse("ofd needs at least one stage map in both networks")
        self.n = n
        self.connectors = nn.ModuleList([connector(int(s.shape[1]), int(t.shape[1]))
                                         for s, t in zip(s_pre[-n:], t_pre[-n:])])
        for i, bn in enumerate(bns[-n:]):  # saved with the distiller: the margins of the run's teacher
            self.register_buffer(f"margin{i}", ofd_margin(bn).view(1, -1, 1, 1))

    def margins(self) -> list:
        return [getattr(self, f"margin{i}") for i in range(self.n)]

    def forward(self, s, t, batch):
        loss = 0.0
        for i, (conn, f_s, f_t, m) in enumerate(zip(self.connectors, s.preacts[1:-1][-self.n:],
                                                    t.preacts[1:-1][-self.n:], self.margins())):
            src = conn(f_s)
            target = F.adaptive_avg_pool2d(f_t.float(), src.shape[-2:])
            loss = loss + ofd_partial_l2(src, target, m) / 2 ** (self.n - 1 - i)
        return loss
