"""The one training loop every method runs through, and validation.

Per step: teacher outputs (once), then the trainable module (student + distiller, the unit DDP
wraps) returns its losses: ``cls * CE + div * KL(T) + beta * distill``. Nothing here knows a
method's name; the distiller's class attributes and methods say what it needs.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import Batch, Outputs
from distiller_zoo.KD import kd_loss
from helper import distributed as dist_util
from helper.forward import ModelRunner, eager_unless, new_step
from helper.optim import lr_at, set_lr
from helper.teachers import for_student
from helper.util import accuracy


class DistillStudent(nn.Module):
    """The trainable part of a step: the student and the distiller's own modules.

    One module so that DDP reduces the gradients of both, and so that checkpoints and the optimiser
    see one parameter set. ``distiller`` is None for plain training (train_teacher.py, baselines).
    """

    def __init__(self, student: nn.Module, distiller: nn.Module | None, opt):
        super().__init__()
        self.student = student
        self.distiller = distiller
        needs = distiller.needs if distiller is not None else frozenset()
        if distiller is not None and distiller.logits_need_feats:
            needs = needs | {"feats"}
        self.runner = ModelRunner(student, needs, getattr(distiller, "layer_transform", None))
        self.opt = opt

    def logits(self, s: Outputs) -> torch.Tensor:
        return self.distiller.logits(s) if self.distiller is not None else s.logits

    def forward(self, batch: Batch, t_out: Outputs | None = None, stage: str = "main") -> dict:
        return self.losses(self.runner(batch.images), batch, t_out, stage)

    def losses(self, s_out: Outputs, batch: Batch, t_out: Outputs | None = None, stage: str = "main") -> dict:
        """The loss terms of a step from the student's outputs (benchmarks time this part on its own)."""
        opt = self.opt
        zero = s_out.logits.new_zeros((), dtype=torch.float32)
        if stage == "init":
            loss = self.distiller.init_loss(s_out, t_out, batch).float()
            return {"loss": loss, "loss_init": loss, "logits": s_out.logits, "s_out": s_out}
        logits = self.logits(s_out)
        loss_cls = mixed_cross_entropy(logits, batch) if opt.cls != 0 else zero
        loss_div = kd_loss(logits, t_out.logits, opt.kd_T) if (t_out is not None and opt.div != 0) else zero
        use_kd = self.distiller is not None and self.distiller.has_loss and opt.beta != 0
        loss_kd = self.distiller(s_out, t_out, batch).float() if use_kd else zero
        loss = opt.cls * loss_cls + opt.div * loss_div + opt.beta * loss_kd
        return {"loss": loss, "loss_cls": loss_cls, "loss_div": loss_div, "loss_kd": loss_kd,
                "logits": logits, "s_out": s_out}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Validation logits; SimKD-style methods predict through their own path."""
        if self.distiller is not None and self.distiller.logits_need_feats:
            feats, logits = self.student(x, is_feat=True)
            return self.distiller.logits(Outputs(logits=logits, feats=list(feats)))
        return self.student(x)


def mixed_cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), batch.targets)
    if batch.mix_targets is None:
        return ce
    return batch.mix_lam * ce + (1.0 - batch.mix_lam) * F.cross_entropy(logits.float(), batch.mix_targets)


def to_batch(data, device, channels_last: bool = False) -> Batch:
    """Loader tuples ``(images, targets, index[, contrast_idx])`` to a Batch on ``device``."""
    images = data[0].to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = data[1].to(device, non_blocking=True)
    index = data[2].to(device, non_blocking=True) if len(data) > 2 else None
    contrast = data[3].to(device, non_blocking=True) if len(data) > 3 else None
    return Batch(images=images, targets=targets, index=index, contrast_idx=contrast)


def autocast(opt, device):
    """bf16 autocast when --amp (CUDA; CPU too, slowly); a no-op context otherwise (also for opt None)."""
    if getattr(opt, "amp", False):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(epoch, loader, step_module, inner: DistillStudent, teacher, optimizer, opt,
                    device, stage: str = "main", log=print, mixup=None) -> dict:
    """One epoch. ``step_module`` is ``inner`` or its DDP wrapper; ``teacher`` is None for vanilla training.

    Metrics stay on the device, summed in one tensor, and are read once per ``print_freq`` steps and at
    the end. Under ``--compile`` a batch smaller than the first (the last partial one) runs eagerly.
    """
    inner.train()
    if stage == "init":  # RepDistiller: the student trains in init only if its weights are optimised
        trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
        inner.student.train(any(id(p) in trained for p in inner.student.parameters()))
    keys = ("loss", "loss_init") if stage == "init" else ("loss", "loss_cls", "loss_div", "loss_kd")
    names = keys + ("acc1", "acc5")
    steps = len(loader)
    n_seen, t0, total, full_bs = 0, time.time(), None, None
    distiller = inner.distiller
    channels_last = getattr(opt, "channels_last", False)
    for step, data in enumerate(loader):
        lr = lr_at(opt, epoch, step, steps) if stage == "main" else optimizer.param_groups[0]["lr"]
        set_lr(optimizer, lr)
        batch = to_batch(data, device, channels_last)
        if mixup is not None:
            batch = mixup(batch)
        bs = batch.targets.size(0)
        full_bs = full_bs or bs
        new_step(opt, device)
        with eager_unless(bs == full_bs, opt), autocast(opt, device):
            t_out = teacher.outputs(batch.images) if teacher is not None else None
            res = step_module(batch, for_student(t_out) if t_out is not None else None, stage)
            loss = res["loss"]
            if teacher is not None and stage == "main":
                extra = teacher.loss(t_out, res["logits"], batch, opt)
                if extra is not None:
                    loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if stage == "main":
            if distiller is not None:
                with torch.no_grad():
                    distiller.after_step(res["s_out"], t_out, batch)
            if teacher is not None:
                teacher.after_step(inner.student)
        with torch.no_grad():
            acc1, acc5 = accuracy(res["logits"].detach(), batch.targets, topk=(1, 5))
            stats = torch.stack([res[k].detach().float() for k in keys] + [acc1, acc5]) * bs
            total = stats if total is None else total + stats
        n_seen += bs
        if opt.print_freq and (step + 1) % opt.print_freq == 0 and dist_util.is_main():
            rate = n_seen * dist_util.world_size() / max(time.time() - t0, 1e-9)
            avg = dict(zip(names, (total / n_seen).tolist()))
            log(f"epoch {epoch} [{step + 1}/{steps}] " + " ".join(f"{k} {avg[k]:.4f}" for k in keys)
                + f" acc@1 {avg['acc1']:.2f} lr {lr:.5f} {rate:.0f} img/s")
    if total is None:
        total = torch.zeros(len(names), device=device)
    out = {k: dist_util.reduce_mean(total[i], n_seen) for i, k in enumerate(names)}
    out["lr"] = optimizer.param_groups[0]["lr"]
    out["img_per_s"] = n_seen * dist_util.world_size() / max(time.time() - t0, 1e-9)
    out["time"] = time.time() - t0
    return out


@torch.no_grad()
def validate(predict, loader, device, opt=None) -> dict:
    """Top-1/top-5 accuracy and CE loss of ``predict(x) -> logits`` on the whole validation set.

    Ranks hold exact, non-overlapping shards; sums and counts are all-reduced, so every sample counts once.
    """
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    count = 0
    channels_last = getattr(opt, "channels_last", False) if opt is not None else False
    full_bs = None
    for data in loader:
        x = data[0].to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data[1].to(device, non_blocking=True)
        full_bs = full_bs or y.size(0)
        new_step(opt, device)
        with eager_unless(y.size(0) == full_bs, opt), autocast(opt, device):
            logits = predict(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        a1, a5 = accuracy(logits, y, topk=(1, 5))
        correct1 += a1 * y.size(0) / 100.0
        correct5 += a5 * y.size(0) / 100.0
        count += y.size(0)
    totals = dist_util.all_reduce_sum(torch.stack([correct1, correct5, loss_sum,
                                                   torch.tensor(float(count), device=device)]))
    c1, c5, ls, n = totals.tolist()
    n = max(n, 1.0)
    return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "loss": ls / n, "count": int(n)}
