"""Who plays the teacher: the three training modes of the loop.

offline  a pre-trained network, frozen in eval mode, run under inference_mode (RepDistiller).
self     an exponential moving average of the student itself (self-distillation: no external
         teacher; the student's own smoothed past teaches it), frozen between updates.
online   a peer network trained together with the student (deep mutual learning): each learns from
         the other's detached predictions; the peer has its own CE + KL terms and is checkpointed.

The loop asks every teacher the same three things: ``outputs(x)`` for the student's losses,
``loss(...)`` for its own training (0 unless online) and ``after_step(student)``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from distiller_zoo.KD import kd_loss
from helper.forward import ModelRunner, detach_outputs


class FrozenTeacher:
    """Offline KD: weights and BatchNorm statistics never change."""

    trainable = False
    strong = False  # also run on the batch's second view (set when a student uses one)

    def __init__(self, model: nn.Module, needs=frozenset(), inference_mode: bool = True, layer_transform=None,
                 layer_views: dict | None = None):
        """``layer_views`` ({key: transform}): record the block layers once per reduction the students ask
        for (a teacher shared by a group); ``layer_transform``: the one reduction of a single student."""
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.runner = ModelRunner(self.model, needs, layer_transform, layer_views)
        self.inference_mode = inference_mode

    def outputs(self, x: torch.Tensor):
        """Teacher outputs for the student's losses: ordinary tensors without grad."""
        if self.model.training:  # a no-op walk over every module per step otherwise
            self.model.eval()
        if self.inference_mode:
            with torch.inference_mode():
                out = self.runner(x)
            return detach_outputs(out, clone=True)
        with torch.no_grad():
            return self.runner(x)

    def loss(self, t_out, s_logits, batch, opt):
        return None

    def after_step(self, student: nn.Module) -> None:
        pass

    def parameters(self):
        return []

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


class EMATeacher(FrozenTeacher):
    """Self-distillation: the teacher is ``decay``-EMA of the student's weights (buffers copied)."""

    def __init__(self, student: nn.Module, needs=frozenset(), decay: float = 0.999, layer_transform=None):
        ema = copy.deepcopy(student)
        for m in ema.modules():  # the copy must not fire the student's layer-recording hooks
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        super().__init__(ema, needs, inference_mode=True, layer_transform=layer_transform)
        self.decay = decay

    @torch.no_grad()
    def after_step(self, student: nn.Module) -> None:
        src = getattr(student, "module", student)
        for t, s in zip(self.model.parameters(), src.parameters()):
            t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)
        for t, s in zip(self.model.buffers(), src.buffers()):
            t.copy_(s)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state) -> None:
        if state is not None:
            self.model.load_state_dict(state)


class PeerTeacher:
    """Online distillation (deep mutual learning): the peer trains with CE + div * KL(peer || student)."""

    trainable = True
    strong = False

    def __init__(self, model: nn.Module, needs=frozenset(), layer_transform=None):
        self.model = model
        self.runner = ModelRunner(model, needs, layer_transform)
        self.wrapped = model  # replaced by a DDP wrapper under torch.distributed

    def outputs(self, x: torch.Tensor):
        self.model.train()
        return self.runner(x, model=self.wrapped)

    def loss(self, t_out, s_logits, batch, opt):
        ce = nn.functional.cross_entropy(t_out.logits.float(), batch.targets)
        return opt.cls * ce + opt.div * kd_loss(t_out.logits, s_logits.detach(), opt.kd_T)

    def after_step(self, student: nn.Module) -> None:
        pass

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state) -> None:
        if state is not None:
            self.model.load_state_dict(state)


def for_student(t_out):
    """What the student's losses see of a teacher: never a path for gradients into the teacher."""
    return detach_outputs(t_out) if t_out.logits.requires_grad else t_out
