"""The one training loop every method runs through, and validation.

Per step: one batch, each distinct teacher's outputs (once), then every trained run's step on that batch:
its trainable module (student + distiller, the unit DDP wraps) returns its losses,
``cls * CE + div * KL(T) + beta * distill``, and its optimiser steps. One run is a plain
train_student.py / train_teacher.py run; several are a group (train_group.py: K students, one teacher,
one data stream). Nothing here knows a method's name; the distiller's class attributes and methods say
what it needs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import Batch, Outputs
from distiller_zoo.KD import kd_loss
from helper import distributed as dist_util
from helper.forward import ModelRunner, eager_unless, new_step, transform_key, view
from helper.optim import backward_and_step, lr_at, set_lr
from helper.teachers import for_student
from helper.util import accuracy

MAIN_KEYS = ("loss", "loss_cls", "loss_div", "loss_kd")
INIT_KEYS = ("loss", "loss_init")


def warmup_factor(warmup_epochs: float, epoch: int) -> float:
    """``min(epoch / W, 1)`` (mdistiller's DKD/ReviewKD/OFD warm-up; epochs are 1-based); 1 when W is 0."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs and warmup_epochs > 0 else 1.0


def uses_strong_view(opt) -> bool:
    return (getattr(opt, "strong_aug", None) or "none") != "none"


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
        self.uses_strong = uses_strong_view(opt)
        self.weights = (opt.cls, opt.div, opt.beta)

    def set_epoch(self, epoch: int) -> None:
        """The loss weights of this epoch (``--div_warmup``/``--beta_warmup`` ramps) and the distiller's
        schedules."""
        opt = self.opt
        self.weights = (opt.cls, opt.div * warmup_factor(getattr(opt, "div_warmup", 0), epoch),
                        opt.beta * warmup_factor(getattr(opt, "beta_warmup", 0), epoch))
        if self.distiller is not None:
            self.distiller.set_epoch(epoch)

    def logits(self, s: Outputs) -> torch.Tensor:
        return self.distiller.logits(s) if self.distiller is not None else s.logits

    def loss_logits(self, s: Outputs) -> torch.Tensor:
        return self.distiller.loss_logits(s) if self.distiller is not None else s.logits

    def forward(self, batch: Batch, t_out: Outputs | None = None, stage: str = "main") -> dict:
        s_out = self.runner(batch.images)
        if self.uses_strong and stage == "main" and batch.images_strong is not None:
            s_out.strong = self.runner(batch.images_strong)
        return self.losses(s_out, batch, t_out, stage)

    def losses(self, s_out: Outputs, batch: Batch, t_out: Outputs | None = None, stage: str = "main") -> dict:
        """The loss terms of a step from the student's outputs (benchmarks time this part on its own).

        With a second view (``--strong_aug``) the CE and KD terms are summed over both views; the method's
        own term sees both through ``s.strong`` / ``t.strong``. ``loss_task`` is the CE part alone (what
        ``--optimizer dot`` gives its own momentum; ``loss_distill`` the rest)."""
        opt = self.opt
        zero = s_out.logits.new_zeros((), dtype=torch.float32)
        if stage == "init":
            loss = self.distiller.init_loss(s_out, t_out, batch).float()
            return {"loss": loss, "loss_task": zero, "loss_distill": loss, "loss_init": loss, "logits": s_out.logits,
                    "s_out": s_out}
        w_cls, w_div, w_beta = self.weights
        logits = self.logits(s_out)
        views = [s_out] if s_out.strong is None else [s_out, s_out.strong]
        loss_cls = sum(mixed_cross_entropy(self.loss_logits(v), batch) for v in views) if opt.cls != 0 else zero
        loss_div = zero
        if t_out is not None and opt.div != 0:
            t_views = [t_out] if s_out.strong is None else [t_out, t_out.strong]
            first = self.loss_logits(s_out)
            T = self.distiller.kd_temperature(first, t_out.logits) if self.distiller is not None else None
            T = opt.kd_T if T is None else T
            stand = getattr(opt, "logit_stand", False)
            loss_div = sum(kd_loss(first if v is s_out else self.loss_logits(v), tv.logits, T, stand)
                           for v, tv in zip(views, t_views))
        use_kd = self.distiller is not None and self.distiller.has_loss and opt.beta != 0
        loss_kd = self.distiller(s_out, t_out, batch).float() if use_kd else zero
        task, distill = w_cls * loss_cls, w_div * loss_div + w_beta * loss_kd
        return {"loss": task + distill, "loss_task": task, "loss_distill": distill, "loss_cls": loss_cls,
                "loss_div": loss_div, "loss_kd": loss_kd, "logits": logits, "s_out": s_out}

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
    """Loader tuples ``(images, targets, index[, contrast_idx])`` to a Batch on ``device``; ``images`` is
    a pair ``(weak, strong)`` when the loader serves a second view (``--strong_aug``)."""
    images, strong = (data[0], None) if torch.is_tensor(data[0]) else data[0]

    def move(x):
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    targets = data[1].to(device, non_blocking=True)
    index = data[2].to(device, non_blocking=True) if len(data) > 2 else None
    contrast = data[3].to(device, non_blocking=True) if len(data) > 3 else None
    return Batch(images=move(images), targets=targets, index=index, contrast_idx=contrast,
                 images_strong=move(strong) if strong is not None else None)


def autocast(opt, device):
    """bf16 autocast when --amp (CUDA; CPU too, slowly); a no-op context otherwise (also for opt None)."""
    if getattr(opt, "amp", False):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Run:
    """What the loop needs of one trained network (helper/engine.py's TrainRun adds logging and
    checkpoints): its options, trainable module and the wrapper that steps it (DDP or itself), optimiser,
    teacher (None for plain training), RNG stream, a label for its log lines, the key of its view of a
    shared teacher's recorded layers, and whether it reads dataset-side contrast indices."""

    def __init__(self, opt, inner: DistillStudent, optimizer, teacher=None, *, step_module=None, rng=None,
                 label: str = "", layer_key=None, wants_contrast: bool | None = None, owner=None):
        self.opt, self.inner, self.optimizer, self.teacher = opt, inner, optimizer, teacher
        self.owner = owner  # the main-stage run an init stage belongs to: a stop stops that run
        self.step_module = step_module if step_module is not None else inner
        self.rng = rng if rng is not None else contextlib.nullcontext()
        self.label = label
        distiller = inner.distiller
        self.layer_key = layer_key if layer_key is not None else \
            transform_key(getattr(distiller, "layer_transform", None))
        if wants_contrast is None:
            wants_contrast = bool(distiller is not None and type(distiller).loader_options(opt).get("contrast"))
        self.wants_contrast = wants_contrast
        self.stopped: str | None = None

    def batch_view(self, batch: Batch) -> Batch:
        """The batch as this run sees it: contrast indices only for a run that asked the loader for them."""
        if self.wants_contrast or batch.contrast_idx is None:
            return batch
        return dataclasses.replace(batch, contrast_idx=None)

    def stop(self, reason: str, log=print) -> None:
        if self.owner is not None:
            self.owner.stop(f"{reason} (init stage)")
            self.stopped = self.owner.stopped
        elif self.stopped is None:
            self.stopped = reason
            if dist_util.is_main():
                log(f"{self.label}stopped: {reason}")


def _teacher_outputs(run, batch: Batch, cache: dict):
    """The run's view of its teacher's outputs on this batch; a teacher shared by several runs runs once."""
    teacher = run.teacher
    if teacher is None:
        return None
    key = id(teacher)
    if key not in cache:
        out = teacher.outputs(batch.images)
        if getattr(teacher, "strong", False) and batch.images_strong is not None:
            out.strong = teacher.outputs(batch.images_strong)
        cache[key] = out
    return view(for_student(cache[key]), run.layer_key)


def _check_finite(runs, sums, where: str, log) -> None:
    """Stop every run whose running loss sum is not finite (one host read for all runs; the same verdict on
    every rank: the sums are all-reduced)."""
    live = [i for i, r in enumerate(runs) if not r.stopped]
    if not live:
        return
    vals = dist_util.all_reduce_sum(torch.stack([sums[i] for i in live]).float()).tolist()
    for i, v in zip(live, vals):
        if not math.isfinite(v):
            runs[i].stop(f"the training loss became {v} {where}: the run diverged; lower -b/--beta or "
                         f"--learning_rate", log)


def train_one_epoch(epoch, loader, runs, device, stage: str = "main", log=print, mixup=None) -> list:
    """One epoch of every run in ``runs`` (each: ``opt``, ``inner``, ``step_module``, ``optimizer``,
    ``teacher``, ``rng``, ``label``, ``layer_key``, ``stopped``, ``stop()``; see helper/engine.py TrainRun).

    Each batch is read, augmented and mixed once; each distinct teacher runs once on it; then every run
    steps, inside its own RNG stream, so that a run's results do not depend on the others (a group member
    is bitwise the same experiment as a separate run with the same seeds). Metrics stay on the device,
    summed per run, and are read once per ``print_freq`` steps (where a non-finite loss stops its run) and
    at the end. Under ``--compile`` a batch smaller than the first (the last partial one) runs eagerly.
    Returns one metrics dict per run (None for a run that stopped); ``img_per_s`` counts the data stream.
    """
    keys = INIT_KEYS if stage == "init" else MAIN_KEYS
    names = keys + ("acc1", "acc5")
    opt0 = runs[0].opt  # speed paths (amp, channels_last, compile, print_freq) are the process's
    for run in runs:
        run.inner.train()
        if stage == "init":  # RepDistiller: the student trains in init only if its weights are optimised
            trained = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
            run.inner.student.train(any(id(p) in trained for p in run.inner.student.parameters()))
        else:
            run.inner.set_epoch(epoch)
    steps = len(loader)
    n_seen, t0, full_bs = 0, time.time(), None
    totals = [torch.zeros(len(names), device=device) for _ in runs]
    channels_last = getattr(opt0, "channels_last", False)
    for step, data in enumerate(loader):
        batch = to_batch(data, device, channels_last)
        if mixup is not None:
            batch = mixup(batch)
        bs = batch.targets.size(0)
        full_bs = full_bs or bs
        new_step(opt0, device)
        cache = {}
        for i, run in enumerate(runs):
            if run.stopped:
                continue
            with run.rng:
                if stage == "main":
                    lr = lr_at(run.opt, epoch, step, steps)
                    set_lr(run.optimizer, lr)
                with eager_unless(bs == full_bs, opt0), autocast(opt0, device):
                    t_out = _teacher_outputs(run, batch, cache)
                    res = run.step_module(run.batch_view(batch), t_out, stage)
                    extra = run.teacher.loss(t_out, res["logits"], batch, run.opt) \
                        if run.teacher is not None and stage == "main" else None
                backward_and_step(run.optimizer, res, extra)
                if stage == "main":
                    with torch.no_grad():
                        if run.inner.distiller is not None:
                            run.inner.distiller.after_step(res["s_out"], t_out, batch)
                        if run.teacher is not None:
                            run.teacher.after_step(run.inner.student)
            with torch.no_grad():
                acc1, acc5 = accuracy(res["logits"].detach(), batch.targets, topk=(1, 5))
                totals[i] += torch.stack([res[k].detach().float() for k in keys] + [acc1, acc5]) * bs
        n_seen += bs
        if opt0.print_freq and (step + 1) % opt0.print_freq == 0:
            _check_finite(runs, [t[0] for t in totals], f"at step {step + 1} of epoch {epoch}", log)
            if dist_util.is_main():
                rate = n_seen * dist_util.world_size() / max(time.time() - t0, 1e-9)
                for i, run in enumerate(runs):
                    if run.stopped:
                        continue
                    avg = dict(zip(names, (totals[i] / n_seen).tolist()))
                    lr = run.optimizer.param_groups[0]["lr"]
                    log(f"{run.label}epoch {epoch} [{step + 1}/{steps}] "
                        + " ".join(f"{k} {avg[k]:.4f}" for k in keys)
                        + f" acc@1 {avg['acc1']:.2f} lr {lr:.5f} {rate:.0f} img/s")
    # one all-reduce for every run's sums and the sample count
    count = torch.tensor([float(n_seen)], device=device)
    summed = dist_util.all_reduce_sum(torch.cat([torch.stack(totals).flatten(), count])).tolist()
    n_total = max(summed[-1], 1.0)
    elapsed = time.time() - t0
    out = []
    for i, run in enumerate(runs):
        vals = summed[i * len(names):(i + 1) * len(names)]
        if not run.stopped and not math.isfinite(vals[0]):
            run.stop(f"the training loss became {vals[0] / n_total} in epoch {epoch}: the run diverged; lower "
                     "-b/--beta or --learning_rate", log)
        if run.stopped:
            out.append(None)
            continue
        rec = {k: v / n_total for k, v in zip(names, vals)}
        rec.update(lr=run.optimizer.param_groups[0]["lr"], img_per_s=n_total / max(elapsed, 1e-9), time=elapsed)
        out.append(rec)
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
