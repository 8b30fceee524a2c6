"""Optimisers and learning-rate schedules, set per step so that resume and every schedule agree.

``step``: RepDistiller's ``lr0 * rate ** #{d in decay_epochs : epoch > d}`` (epochs are 1-based).
``cosine``: per-step cosine annealing to 0 (seeds/004), after an optional linear warm-up (seeds/003).
"""
from __future__ import annotations

import math

import torch

from helper.errors import ConfigError

SMALL_LR_MODELS = ("MobileNetV2", "MobileNetV2_1_0", "ShuffleV1", "ShuffleV2", "ShuffleV2_1_5")


def default_lr(model_name: str) -> float:
    """RepDistiller's learning rates: 0.01 for MobileNet/ShuffleNet, 0.05 otherwise."""
    return 0.01 if model_name in SMALL_LR_MODELS else 0.05


def build_optimizer(params, opt) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    name = getattr(opt, "optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                               weight_decay=opt.weight_decay, nesterov=getattr(opt, "nesterov", False))
    if name == "adam":
        return torch.optim.Adam(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    raise ConfigError(f"unknown --optimizer {name!r}; choose sgd, adam or adamw")


def lr_at(opt, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for ``step`` (0-based) of ``epoch`` (1-based)."""
    lr0 = opt.learning_rate
    warm = getattr(opt, "warmup_epochs", 0)
    t = (epoch - 1) + step / max(steps_per_epoch, 1)  # epochs elapsed
    if warm > 0 and t < warm:
        return lr0 * (t + 1.0 / max(steps_per_epoch, 1)) / warm
    schedule = getattr(opt, "lr_schedule", "step")
    if schedule == "step":
        return lr0 * opt.lr_decay_rate ** sum(epoch > d for d in opt.lr_decay_epochs)
    if schedule == "cosine":
        total = max(opt.epochs - warm, 1e-9)
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * min((t - warm) / total, 1.0)))
    raise ConfigError(f"unknown --lr_schedule {schedule!r}; choose step or cosine")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
