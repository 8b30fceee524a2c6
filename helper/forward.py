"""Run a model and return what a distiller needs from it, as :class:`Outputs`.

One place decides how logits, stage features (``is_feat``/``preact``) and block-level layers
(forward hooks, models/layers.py) are taken from a model, for the student, the teacher and the probe.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from distiller_zoo.base import Outputs
from models.layers import LayerRecorder


class ModelRunner:
    """Calls ``model`` so that it yields exactly what ``needs`` asks for."""

    def __init__(self, model: nn.Module, needs=frozenset(), layer_transform=None):
        self.model = model
        self.needs = frozenset(needs)
        self.is_feat = bool(self.needs & {"feats", "preact"})
        self.preact = "preact" in self.needs
        self.recorder = LayerRecorder(model, transform=layer_transform) if "layers" in self.needs else None

    def __call__(self, x: torch.Tensor, model: nn.Module | None = None) -> Outputs:
        """``model``: the same network wrapped (DDP, compiled); hooks live on the inner module."""
        model = model if model is not None else self.model
        if self.recorder is not None:
            with self.recorder:
                out = model(x, is_feat=self.is_feat, preact=self.preact)
            layers = self.recorder.layers
        else:
            out = model(x, is_feat=self.is_feat, preact=self.preact) if self.is_feat else model(x)
            layers = None
        if self.is_feat:
            feats, logits = out
            return Outputs(logits=logits, feats=list(feats), layers=layers)
        return Outputs(logits=out, layers=layers)

    def close(self):
        if self.recorder is not None:
            self.recorder.remove()


def detach_outputs(o: Outputs, clone: bool = False) -> Outputs:
    """Teacher outputs made by inference_mode are cloned into ordinary tensors: autograd may save
    them for the student's backward, which inference tensors forbid."""
    f = (lambda t: t.clone()) if clone else (lambda t: t.detach())
    return Outputs(logits=f(o.logits),
                   feats=[f(t) for t in o.feats] if o.feats is not None else None,
                   layers=[f(t) for t in o.layers] if o.layers is not None else None)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """``torch.compile`` a model's forward in place (``Module.compile``) and return it.

    The module stays the same object, so its state_dict keys, ``place``, DDP wrapping and checkpoints are
    unchanged. Forward hooks registered on its blocks before this call (models/layers.py's LayerRecorder,
    which every ModelRunner sets up at construction) are traced into the graph: compile after the runners
    exist. Shapes are static (``dynamic=False``): one graph per (train/eval, what is returned); a batch of
    another size (the last partial batch of an epoch or of validation) runs eagerly under
    :func:`eager_unless`, so it costs no recompilation and no CUDA-graph re-recording.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    model.compile(mode=None if mode == "default" else mode, dynamic=False)
    return model


def eager_unless(full_batch: bool, opt=None):
    """Context for one step: under ``--compile``, a batch that is not full runs every compiled forward
    eagerly (``torch.compiler.set_stance("force_eager")``); otherwise nothing changes."""
    if full_batch or not getattr(opt, "compile", False):
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def new_step(opt, device) -> None:
    """Mark a new training iteration for CUDA graphs (``--compile_mode reduce-overhead``): outputs of the
    previous step's graphs may then be overwritten. A no-op otherwise."""
    if getattr(opt, "compile", False) and torch.device(device).type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
