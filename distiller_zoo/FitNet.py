"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (hint), with the seeds' variants as options.

Loss: ``MSE(R(f_s[h]), f_t[h])``, mean over all elements, with ``h = --hint_layer`` indexing both
feature lists (negative indices count from the end: -1 is the pooled vector, -2 the last stage map).
The regressor R is ``--hint_regressor``:

* ``convreg`` (default; RepDistiller's ConvReg): conv 3x3/s2 if s_H = 2 t_H, transposed conv 4x4/s2 if
  2 s_H = t_H, conv with kernel 1 + s_H - t_H if s_H >= t_H, then BN + ReLU. Any other size pair is
  refused with a clear message (RepDistiller's ``raise NotImplemented`` is a TypeError).
* ``convbn`` (seeds/004): 3x3 conv + BN, no ReLU, same spatial size required. The seed distilled the
  final 2x2 map of VGG9 -> VGG5 with ``0.5 * CE + 0.5 * MSE``: ``--hint_layer -2 --hint_regressor convbn
  -c 0.5 -d 0 -b 0.5``.
* ``linear`` (seeds/000): Linear + BatchNorm1d for vector features (the pooled / hidden vector). With
  ``--hint_norm`` both the regressed student vector and the teacher vector are L2-normalised before
  the MSE. seeds/000 trained ``0.7 * CE + 0.3 * MSE``: ``--hint_layer -1 --hint_regressor linear
  --hint_norm -c 0.7 -d 0 -b 0.3``.

Two-stage training. FitNet's stage 1 is this method's init stage: for ``--init_epochs`` epochs SGD
trains the regressor and the student's parameters *up to the hint layer* on the hint loss alone, then
the main stage trains CE + KD + beta * hint. "Up to the hint layer" is decided generically, with no
per-model list: the student parameters that receive a gradient from ``f_s[h]`` in one probe
forward/backward (eval mode, batch 2, on ``model.input_shape``; autograd reachability, so a parameter
counts even if its gradient happens to be zero). Layers after the hint point run in train mode during
stage 1 (their BN statistics move) but are not updated.

Defaults are RepDistiller's: its FitNet trains jointly (no stage 1; mdistiller#29) at its default
``--hint_layer 2``, so ``--distill hint -c 1 -d 0 -b 100`` copied from its scripts means the same here
(``init_epochs`` defaults to 0 for this method, unlike the other init-stage methods' 30). SemCKD's
setting is ``--hint_layer 1``; ``--init_epochs 30`` runs the paper's stage 1 first. (The paper's stage 2
drops the hint term, i.e. KD only; here the main stage keeps ``beta * hint``.)

RepDistiller weights (scripts/run_cifar_distill.sh): ``-c 1 -d 0 -b 100``.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from models.util import ConvBNReg, ConvReg, LinearBNReg, convreg_plan

from . import register
from .base import Distiller, refuse


def _shape(f: torch.Tensor) -> tuple:
    return tuple(int(v) for v in f.shape[1:])


@register("hint")
class FitNet(Distiller):
    """FitNet hint loss on feats[hint_layer] through a trainable regressor; stage 1 as the init stage."""
    recommended = "-c 1 -d 0 -b 100"
    init_stage = True
    defaults = {"init_epochs": 0}  # RepDistiller's joint FitNet (its --hint_layer default, 2, is the parser's)

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("hint (FitNet)")
        g.add_argument("--hint_regressor", default="convreg", choices=("convreg", "convbn", "linear"),
                       help="hint: regressor from student to teacher feature: convreg (RepDistiller ConvReg), "
                            "convbn (3x3 conv + BN, seeds/004), linear (Linear + BatchNorm1d on vectors, seeds/000)")
        g.add_argument("--hint_norm", action="store_true",
                       help="hint: L2-normalise the regressed student and the teacher feature per sample "
                            "before the MSE (seeds/000)")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        s_feats, t_feats = ctx.s_probe.feats, ctx.t_probe.feats
        h = int(opt.hint_layer)
        n = min(len(s_feats), len(t_feats))
        if not -n <= h < n:
            refuse(f"--hint_layer {h} is out of range: the student has {len(s_feats)} features and the teacher "
                   f"{len(t_feats)}; choose an index in [{-n}, {n - 1}] (-1 is the pooled vector)")
        self.hint_layer = h
        self.normalize = bool(getattr(opt, "hint_norm", False))
        kind = getattr(opt, "hint_regressor", "convreg")
        s_shape, t_shape = _shape(s_feats[h]), _shape(t_feats[h])
        where = f"--hint_layer {h}: student {s_shape}, teacher {t_shape}"
        if kind == "linear":
            if len(s_shape) != 1 or len(t_shape) != 1:
                refuse(f"--hint_regressor linear needs vector features ({where}); use --hint_layer -1 "
                       "or a convolutional regressor")
            self.regressor = LinearBNReg(s_shape[0], t_shape[0])
        else:
            if len(s_shape) != 3 or len(t_shape) != 3:
                refuse(f"--hint_regressor {kind} needs (C, H, W) maps ({where}); for vectors use "
                       "--hint_regressor linear")
            if kind == "convreg":
                if convreg_plan(s_shape[1:], t_shape[1:]) is None:
                    refuse(f"hint: ConvReg cannot map the student's {s_shape[1]}x{s_shape[2]} map onto the teacher's "
                           f"{t_shape[1]}x{t_shape[2]} ({where}); it needs s_H = 2 t_H, 2 s_H = t_H or s_H >= t_H: "
                           "choose another --hint_layer")
                self.regressor = ConvReg(s_shape, t_shape)
            else:
                if s_shape[1:] != t_shape[1:]:
                    refuse(f"--hint_regressor convbn keeps the spatial size, but it differs ({where}); "
                           "use --hint_regressor convreg or another --hint_layer")
                self.regressor = ConvBNReg(s_shape[0], t_shape[0])

    def forward(self, s, t, batch):
        x_s = self.regressor(s.feats[self.hint_layer]).float()
        x_t = t.feats[self.hint_layer].float()
        if self.normalize:
            x_s, x_t = F.normalize(x_s.flatten(1), dim=1), F.normalize(x_t.flatten(1), dim=1)
        return F.mse_loss(x_s, x_t)

    # ---- stage 1 ----------------------------------------------------------------------------------
    def init_loss(self, s, t, batch):
        return self.forward(s, t, batch)

    def init_parameters(self, model_s):
        return self.hint_path_parameters(model_s) + [p for p in self.regressor.parameters() if p.requires_grad]

    def hint_path_parameters(self, model_s) -> list:
        """The student's trainable parameters that ``f_s[hint_layer]`` depends on (probe backward)."""
        net = getattr(model_s, "module", model_s)  # DDP / DataParallel
        params = [p for p in net.parameters() if p.requires_grad]
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None or not params:
            warnings.warn(f"hint: {type(net).__name__} declares no input_shape, so stage 1 cannot tell which "
                          "parameters lie before the hint layer; it optimises all of them (those the hint "
                          "loss does not reach get no gradient and are left unchanged by SGD)")
            return params
        x = torch.randn(2, *input_shape, device=params[0].device)
        was_training = net.training
        net.eval()  # the probe must not move BN statistics
        try:
            with torch.enable_grad():
                feats, _ = net(x, is_feat=True)
                grads = torch.autograd.grad(feats[self.hint_layer].float().sum(), params, allow_unused=True)
        finally:
            net.train(was_training)
        return [p for p, g in zip(params, grads) if g is not None]
