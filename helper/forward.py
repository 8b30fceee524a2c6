"""Run a model and return what a distiller needs from it, as :class:`Outputs`.

One place decides how logits, stage features (``is_feat``/``preact``) and block-level layers
(forward hooks, models/layers.py) are taken from a model, for the student, the teacher and the probe.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch
from torch import nn

from distiller_zoo.base import Outputs
from models.layers import LayerRecorder


def transform_key(tf):
    """A hashable identity of a layer transform, equal for equal ``functools.partial``s (two students that
    both pool to 4x4 share one recorded view of the teacher's layers)."""
    if isinstance(tf, functools.partial):
        return (tf.func, tf.args, tuple(sorted(tf.keywords.items())))
    return tf


class ModelRunner:
    """Calls ``model`` so that it yields exactly what ``needs`` asks for, in one forward.

    ``needs`` is a subset of {"feats", "preact", "layers"}. Stage features come from the model's
    ``is_feat``/``preact`` forward (``preact="both"`` when pre-activations are needed: one forward gives
    both lists); block layers from forward hooks, reduced by ``layer_transform`` as they are recorded, or
    by every transform of ``layer_views`` ({key: transform}: a teacher shared by several students), in
    which case ``Outputs.layers`` is None and :func:`view` picks a student's list.
    """

    def __init__(self, model: nn.Module, needs=frozenset(), layer_transform=None, layer_views: dict | None = None):
        self.model = model
        self.needs = frozenset(needs)
        self.is_feat = bool(self.needs & {"feats", "preact"})
        self.preact = "both" if "preact" in self.needs else False
        self.recorder = None
        if "layers" in self.needs:
            self.recorder = LayerRecorder(model, transform=layer_transform, views=layer_views)
        self.views = layer_views is not None

    def __call__(self, x: torch.Tensor, model: nn.Module | None = None) -> Outputs:
        """``model``: the same network wrapped (DDP, compiled); hooks live on the inner module."""
        model = model if model is not None else self.model
        kwargs = {"is_feat": True, "preact": self.preact} if self.is_feat else {}
        if self.recorder is not None:
            with self.recorder:
                out = model(x, **kwargs)
            layers = None if self.views else self.recorder.layers
            layer_views = self.recorder.views_out if self.views else None
        else:
            out = model(x, **kwargs)
            layers = layer_views = None
        if not self.is_feat:
            return Outputs(logits=out, layers=layers, layer_views=layer_views)
        feats, logits = out
        preacts = None
        if self.preact:
            feats, preacts = feats
            preacts = list(preacts)
        return Outputs(logits=logits, feats=list(feats), preacts=preacts, layers=layers, layer_views=layer_views)

    def close(self):
        if self.recorder is not None:
            self.recorder.remove()


def view(out: Outputs, layer_key=None) -> Outputs:
    """One student's view of shared teacher outputs: its own list of recorded layers (by transform key)."""
    if out is None or out.layer_views is None:
        return out
    strong = view(out.strong, layer_key) if out.strong is not None else None
    return dataclasses.replace(out, layers=out.layer_views.get(layer_key), layer_views=None, strong=strong)


def detach_outputs(o: Outputs, clone: bool = False) -> Outputs:
    """Teacher outputs made by inference_mode are cloned into ordinary tensors: autograd may save
    them for the student's backward, which inference tensors forbid."""
    f = (lambda t: t.clone()) if clone else (lambda t: t.detach())

    def each(ts):
        return [f(t) for t in ts] if ts is not None else None

    return Outputs(logits=f(o.logits), feats=each(o.feats), layers=each(o.layers), preacts=each(o.preacts),
                   layer_views={k: each(v) for k, v in o.layer_views.items()} if o.layer_views is not None else None,
                   strong=detach_outputs(o.strong, clone) if o.strong is not None else None)


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
