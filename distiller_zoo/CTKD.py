"""Li et al. 2023, "Curriculum Temperature for Knowledge Distillation" (CTKD, AAAI), global temperature,
as its code (zhengli97/CTKD: models/temp_global.py, train_student.py, helper/loops.py) computes it.

One learnable scalar theta drives the temperature of the loop's KD term (``-d``)::

    T = t_start + t_end * sigmoid(GRL(theta))        t_start 1, t_end 20: T in (1, 21); theta_0 = 1, T_0 = 15.62

The gradient reversal layer is the identity forward and multiplies the gradient by ``-lambda`` backward, so
theta *ascends* the KD loss (the adversarial temperature) while the student descends it; both are trained by
the student's optimiser in the same step (CTKD puts the module in the student's SGD: same lr, momentum
and weight decay). lambda follows a cosine curriculum over the first ``--ctkd_loops`` (10) epochs::

    lambda(e) = lambda_max * (1 - cos(pi * min(e, L) / L)) / 2            e = 1, 2, ... ; lambda_max 1

Sign and range: CTKD's code multiplies the gradient by ``CosineDecay(max 0, min -1, loops 10).get_value(e)
= (cos(pi e / L) + 1) / 2 - 1``, which goes from 0 (e = 0) to -1 (e >= L): exactly ``-lambda(e)`` above,
the paper's "lambda from 0 to 1, gradient times -lambda" (easy to hard). CTKD#24 reads the code's range as
-1 -> 0; ``get_value`` returns ``max_value`` at loop 0 and ``min_value`` at loop L, so the code and the paper
agree, and this implementation follows both (tests check the multiplier at e = 1 and e >= 10).

The initial temperature is CTKD's (theta = 1, T = 1 + 20 sigmoid(1) = 15.62), not ``--kd_T`` (which CTKD's
script passes but its code does not read when the temperature module is on); ``--ctkd_init_T`` starts
elsewhere (e.g. 4). Published CIFAR-100 setting: ``-c 0.1 -d 0.9`` (KD + CTKD), batch 64, lr 0.05;
``--logit_stand`` standardises the loop's KD term as for plain KD (LS + CTKD: ``--kd_T`` is then unused, the
learned T takes its place). The temperature and lambda are logged to TensorBoard every epoch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import Distiller, refuse


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward (scale = -lambda: a gradient reversal)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def curriculum_lambda(epoch: int, loops: float, lambda_max: float = 1.0) -> float:
    """CTKD's cosine curriculum: 0 before training, ``lambda_max`` from epoch ``loops`` on."""
    i = min(max(epoch, 0), loops)
    return lambda_max * (1.0 - math.cos(math.pi * i / loops)) / 2.0


@register("ctkd")
class CTKD(Distiller):
    needs = frozenset()
    has_loss = False                 # its effect is the temperature of the loop's KD term
    recommended = "-c 0.1 -d 0.9"    # CTKD scripts/run_cifar_distill.sh (-r 0.1 -a 0.9 -b 0)

    @classmethod
    def add_arguments(cls, p):
        g = p.add_argument_group("ctkd")
        g.add_argument("--ctkd_t_start", type=float, default=1.0, help="lowest temperature (CTKD --t_start)")
        g.add_argument("--ctkd_t_end", type=float, default=20.0,
                       help="temperature range above t_start (CTKD --t_end): T in (t_start, t_start + t_end)")
        g.add_argument("--ctkd_loops", type=float, default=10.0,
                       help="epochs of the cosine curriculum of the reversal weight (CTKD --decay_loops)")
        g.add_argument("--ctkd_lambda_max", type=float, default=1.0,
                       help="final reversal weight lambda (CTKD: --decay_min -1, i.e. 1)")
        g.add_argument("--ctkd_init_T", type=float, default=None,
                       help="initial temperature (default: CTKD's theta = 1, T = t_start + t_end * sigmoid(1))")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        if opt.div == 0:
            refuse("ctkd learns the temperature of the loop's KD term, whose weight -d/--div is 0: pass -d "
                   f"(published setting: {self.recommended})")
        self.t_start, self.t_end = opt.ctkd_t_start, opt.ctkd_t_end
        if self.t_start <= 0 or self.t_end <= 0:
            refuse(f"ctkd: --ctkd_t_start {self.t_start} and --ctkd_t_end {self.t_end} must be > 0")
        if opt.ctkd_loops <= 0 or opt.ctkd_lambda_max < 0:
            refuse(f"ctkd: --ctkd_loops {opt.ctkd_loops} must be > 0 and --ctkd_lambda_max "
                   f"{opt.ctkd_lambda_max} >= 0")
        theta = 1.0
        if opt.ctkd_init_T is not None:
            u = (opt.ctkd_init_T - self.t_start) / self.t_end
            if not 0 < u < 1:
                refuse(f"ctkd: --ctkd_init_T {opt.ctkd_init_T} must lie strictly between --ctkd_t_start "
                       f"{self.t_start} and t_start + t_end = {self.t_start + self.t_end}")
            theta = math.log(u / (1 - u))
        self.theta = nn.Parameter(torch.full((1,), theta))
        self.loops, self.lambda_max = opt.ctkd_loops, opt.ctkd_lambda_max
        self.lam = 0.0

    def set_epoch(self, epoch: int) -> None:
        self.lam = curriculum_lambda(epoch, self.loops, self.lambda_max)

    def temperature(self) -> torch.Tensor:
        """The current temperature, a 0-dim tensor through which the reversed gradient reaches theta."""
        theta = ScaleGrad.apply(self.theta, -self.lam)
        return (self.t_start + self.t_end * torch.sigmoid(theta)).reshape(())

    def kd_temperature(self, s_logits, t_logits):
        return self.temperature()

    def forward(self, s, t, batch):
        raise RuntimeError("ctkd has no beta term; its temperature drives the loop's div term")

    def log_tensorboard(self, writer, epoch: int) -> None:
        if writer is not None:
            writer.add_scalar("ctkd/temperature", float(self.temperature().detach()), epoch)
            writer.add_scalar("ctkd/lambda", self.lam, epoch)
