"""Block-level layer capture shared by every model of the zoo.

Layer-level distillers (cka_group) need the ordered outputs of a network's building blocks: the stem,
every residual / conv block and the pooled embedding. Each model names those modules in
``layer_names()``; :class:`LayerRecorder` hooks them. One mechanism for all models, no per-model code.

Why block outputs and not BatchNorm outputs: in-place ReLU and ``out += residual`` overwrite a BN
output after its hook has stored it, so a stored BN tensor silently holds post-activation values.
Block outputs are fresh tensors that nothing modifies afterwards (tests/test_models.py checks this).
Where a model has no module at a layer position (a functional pooling, a stem made of loose modules),
it inserts a parameter-free ``Tap`` (an ``nn.Identity``), which leaves the state_dict unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class Tap(nn.Identity):
    """A parameter-free marker module whose output is a layer: adds no state_dict keys."""


def stage_outputs(logits, feats, preacts, is_feat: bool, preact):
    """The return value of every model's ``forward(x, is_feat, preact)`` (the zoo's one contract).

    ``is_feat`` false: logits. ``preact`` false: ``(feats, logits)``; true: ``(preacts, logits)``
    (RepDistiller's pre-activation stage features); ``"both"``: ``((feats, preacts), logits)``, so that
    one forward serves a caller that needs both (a group of students with different needs). ``preacts``
    may be a callable (computed only when asked: WRN's extra BatchNorm calls).
    """
    if not is_feat:
        return logits
    if preact:
        pre = preacts() if callable(preacts) else preacts
        return ((feats, pre) if preact == "both" else pre), logits
    return feats, logits


def _first_tensor(out):
    """Blocks may return ``(out, preact)``; the layer is the first tensor."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


class LayerRecorder:
    """Records the outputs of ``model.layer_names()`` during a forward pass.

    Usage::

        rec = LayerRecorder(model)
        with rec:                    # enables capture for one forward
            logits = model(x)
        layers = rec.layers          # list of tensors, in forward order

    Hooks stay registered for the recorder's life but do nothing outside ``with``; call
    :meth:`remove` to detach them. ``transform`` (e.g. spatial pooling) is applied inside the hook, so a
    consumer that needs only a reduced view never keeps every full-size block output alive at once. Layers keep their autograd graph (student) or not (teacher under
    no_grad / inference_mode), exactly like the model's own outputs.
    """

    def __init__(self, model: nn.Module, names: list[str] | None = None, transform=None, views: dict | None = None):
        inner = getattr(model, "module", model)  # DDP / DataParallel wrappers
        self.names = list(names if names is not None else inner.layer_names())
        modules = dict(inner.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ValueError(f"{type(inner).__name__}.layer_names() lists modules it does not have: {missing}")
        self._active = False
        self._transform = transform
        # ``views``: {key: transform or None}; every block output is stored once per view (a teacher shared
        # by students that reduce layers differently); :attr:`views_out` then holds one list per key
        self._views = dict(views) if views else None
        self._store: list[torch.Tensor] = []
        self._view_store: dict = {}
        self._handles = [modules[n].register_forward_hook(self._hook) for n in self.names]

    def _hook(self, module, inputs, output):
        if self._active:
            out = _first_tensor(output)
            if self._views is not None:
                for key, tf in self._views.items():
                    self._view_store[key].append(out if tf is None else tf(out))
            else:
                self._store.append(out if self._transform is None else self._transform(out))

    def __enter__(self):
        self._store = []
        self._view_store = {key: [] for key in self._views} if self._views is not None else {}
        self._active = True
        return self

    def __exit__(self, *exc):
        self._active = False
        return False

    def _checked(self, store: list) -> list:
        if len(store) != len(self.names):
            raise RuntimeError(
                f"expected {len(self.names)} layer outputs, recorded {len(store)}: "
                "a listed module ran more or fewer times than once per forward")
        return list(store)

    @property
    def layers(self) -> list[torch.Tensor]:
        return self._checked(self._store)

    @property
    def views_out(self) -> dict:
        """{view key: list of layers} of the last forward (recorders built with ``views``)."""
        return {key: self._checked(store) for key, store in self._view_store.items()}

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
