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


OPTIMIZERS = ("sgd", "adam", "adamw", "dot")


class DOT(torch.optim.Optimizer):
    """Distillation-oriented trainer (Zhao et al., ICCV 2023): SGD with one momentum buffer for the task
    (cross-entropy) gradient and another for the distillation gradient, ``momentum - delta`` and
    ``momentum + delta`` (``--dot_delta``, 0.075), so the distillation direction is smoothed more.

    The update follows mdistiller's implementation (engine/dot.py), step for step: weight decay goes with
    the task gradient; a parameter that receives only one of the two gradients uses the mean momentum
    ``momentum`` for it (and then the distillation gradient carries the weight decay); each buffer starts as
    its first gradient. :meth:`split_step` takes both gradients; a plain ``step()`` (no distillation
    gradient, e.g. train_teacher.py) is SGD with the task momentum rules.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, delta: float = 0.075, weight_decay: float = 0.0):
        if not 0.0 <= delta <= momentum:
            raise ConfigError(f"--dot_delta {delta}: must lie in [0, --momentum {momentum}]")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        return self.split_step({})

    @torch.no_grad()
    def split_step(self, kd_grads: dict):
        """One update from the task gradients in ``p.grad`` and the distillation ones in ``kd_grads``
        ({parameter: gradient}; a parameter absent or None received none)."""
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_kd = group["momentum"] - group["delta"], group["momentum"] + group["delta"]
            m_one = (m_task + m_kd) / 2.0
            for p in group["params"]:
                g_task, g_kd = p.grad, kd_grads.get(p)
                state = self.state[p]
                if g_task is not None:
                    d = g_task.add(p, alpha=wd) if wd else g_task
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(m_task if g_kd is not None else m_one).add_(d)
                    p.add_(buf, alpha=-lr)
                if g_kd is not None:
                    buf = state.get("momentum_kd_buffer")
                    if buf is None:
                        buf = state["momentum_kd_buffer"] = g_kd.clone()
                    elif g_task is not None:
                        buf.mul_(m_kd).add_(g_kd)
                    else:
                        buf.mul_(m_one).add_(g_kd.add(p, alpha=wd) if wd else g_kd)
                    p.add_(buf, alpha=-lr)


def reduces_own_gradients(opt) -> bool:
    """Whether the run's optimiser takes the task and distillation gradients apart (DOT). Under DDP those
    are averaged over ranks by :func:`backward_and_step`, not by DDP's reducer, which serves one gradient
    per forward (``torch.autograd.grad`` before the backward left the ranks' task gradients unreduced under
    ``static_graph``): helper.engine.wrap_ddp then runs DDP's forward under ``no_sync``."""
    return getattr(opt, "optimizer", "sgd") == "dot"


def backward_and_step(optimizer, res: dict, extra=None) -> None:
    """Backward and optimiser step of one training step. ``res`` holds ``loss`` and its split into
    ``loss_task`` (CE) and ``loss_distill`` (the rest); ``extra`` is a loss the teacher adds (online
    peers). An optimiser with ``split_step`` (DOT) gets the two gradients apart: the distillation one by
    ``torch.autograd.grad``, the task one by the ordinary backward; under DDP both are averaged over the
    ranks here, in one all-reduce (see :func:`reduces_own_gradients`)."""
    optimizer.zero_grad(set_to_none=True)
    if not hasattr(optimizer, "split_step"):
        loss = res["loss"] if extra is None else res["loss"] + extra
        loss.backward()
        optimizer.step()
        return
    from helper import distributed as dist_util

    distill = res["loss_distill"] if extra is None else res["loss_distill"] + extra
    params = [p for g in optimizer.param_groups for p in g["params"]]
    kd = {}
    if distill.requires_grad:
        grads = torch.autograd.grad(distill, params, retain_graph=True, allow_unused=True)
        kd = {p: g for p, g in zip(params, grads) if g is not None}
    if res["loss_task"].requires_grad:
        res["loss_task"].backward()
    if dist_util.is_dist() and dist_util.world_size() > 1:
        grads = [p.grad for p in params if p.grad is not None] + list(kd.values())
        if grads:
            flat = dist_util.all_reduce_sum(torch.cat([g.flatten() for g in grads])) / dist_util.world_size()
            for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(avg.view_as(g))
    optimizer.split_step(kd)


def build_optimizer(params, opt) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    name = getattr(opt, "optimizer", "sgd")
    if name == "dot":
        return DOT(params, lr=opt.learning_rate, momentum=opt.momentum, delta=getattr(opt, "dot_delta", 0.075),
                   weight_decay=opt.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                               weight_decay=opt.weight_decay, nesterov=getattr(opt, "nesterov", False))
    if name == "adam":
        return torch.optim.Adam(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    raise ConfigError(f"unknown --optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


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
