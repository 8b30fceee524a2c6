"""The interface every distillation method implements, and what the training loop hands it.

A method is one ``Distiller`` subclass, registered under its ``--distill`` name. The loop knows only
this interface: it never compares method names. The total loss is
``cls * CE + div * KL(T) + beta * distiller(s, t, batch)``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from helper.errors import ConfigError


@dataclass
class Outputs:
    """What one forward pass of a model produced, as far as the distiller asked for it.

    ``feats``: stage features ``[stem, stage1, ..., stageK, pooled]`` (pre-activation versions when
    the distiller declared ``"preact"``). ``layers``: block-level outputs (``"layers"``).
    """
    logits: torch.Tensor
    feats: Optional[list] = None
    layers: Optional[list] = None


@dataclass
class Batch:
    """One training batch. ``index``: dataset indices of the samples (CRD's memory bank).

    ``contrast_idx``: CRD's (B, K+1) contrastive indices when the dataset supplies them
    (the instance-sample loader); ``None`` when negatives are drawn in-batch.
    ``mix_targets``/``mix_lam``: set by ``--mixup``; CE becomes lam * CE(targets) + (1-lam) * CE(mix_targets).
    """
    images: torch.Tensor
    targets: torch.Tensor
    index: Optional[torch.Tensor] = None
    contrast_idx: Optional[torch.Tensor] = None
    mix_targets: Optional[torch.Tensor] = None  # mixup: images = lam * x + (1 - lam) * x[perm]
    mix_lam: float = 1.0


@dataclass
class BuildContext:
    """Everything a method may read when it is built (once, before training).

    ``s_probe``/``t_probe``: outputs of one probe forward (batch of 2, eval mode, no grad) with what
    the method ``needs``, so modules are sized from real shapes. ``model_s``/``model_t`` are for
    reading structure (``get_classifier()``, ``layer_names()``) and must never become submodules
    of the distiller (copy what you keep, frozen). ``local_batch_size``: the per-process batch.
    ``train_targets``: labels of the whole training set in dataset-index order (CRD negatives).
    ``plain_train_images(n)``: an iterable of image batches (no augmentation, fixed order) covering
    the first ``n`` images of a seeded shuffle of the training set, for one-time statistics
    computed before training (cka_group's teacher CKA matrix). ``cache``: a dict shared by every student
    built against the same teacher in one process (a fresh dict in a single run), where a method keeps
    what depends on the teacher and the data only, under a key naming everything it depends on.
    """
    opt: argparse.Namespace
    s_probe: Outputs
    t_probe: Outputs
    model_s: nn.Module
    model_t: nn.Module
    num_classes: int
    n_train: int
    local_batch_size: int
    train_targets: Optional[torch.Tensor] = None
    device: torch.device = torch.device("cpu")
    plain_train_images: Optional[Callable[[int], Iterable[torch.Tensor]]] = None
    cache: dict = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class: one distillation loss and the trainable modules it owns.

    Built once from a :class:`BuildContext` (shapes of a probe forward pass, data facts).
    Its parameters are optimised with the student and saved in the student's checkpoint.

    Class attributes a method sets:
      needs       subset of {"feats", "preact", "layers"}: what the loop must extract from both models.
      has_loss    True if the method's effect is ``beta * forward(...)``; then ``-b 0`` is refused.
      init_stage  True if ``init_epochs`` of ``init_loss`` run before the main training.
      drop_last   True if every batch must have the full batch size (batch-sized modules, CKA).
      logits_need_feats  True if :meth:`logits` reads student features (SimKD's classifier path).
    An instance may set ``layer_transform`` (e.g. spatial pooling): block outputs are reduced as they
    are recorded, so the full-size maps are freed at once instead of piling up for the whole forward.
    """

    needs: frozenset = frozenset({"feats"})
    layer_transform = None  # applied to each block output inside the recording hook ("layers")
    has_loss: bool = True
    init_stage: bool = False
    drop_last: bool = False
    logits_need_feats: bool = False

    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.opt = ctx.opt

    # ---- command line and data ----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add flags that only this method reads (shared flags live in helper/options.py)."""

    @classmethod
    def loader_options(cls, opt: argparse.Namespace) -> dict:
        """Extra keyword arguments for dataset.get_dataloaders (CRD's dataset-side sampler)."""
        return {}

    # ---- main stage ---------------------------------------------------------------------------
    def forward(self, s: Outputs, t: Outputs, batch: Batch) -> torch.Tensor:
        """The method's loss for this batch (before the ``beta`` weight)."""
        raise NotImplementedError

    def logits(self, s: Outputs) -> torch.Tensor:
        """The student's prediction used for CE, KL, accuracy and validation."""
        return s.logits

    def after_step(self, s: Outputs, t: Outputs, batch: Batch) -> None:
        """Called after the optimiser step, with no grad (CRD updates its memory bank here)."""

    def prepare(self, log=print) -> None:
        """One-time set-up that needs data or the teacher, run after a resumed state is loaded and
        before any training (cka_group's grouping pass); state restored from a checkpoint is reused."""

    def log_tensorboard(self, writer, epoch: int) -> None:
        """Method-specific diagnostics, once per epoch on every rank; ``writer`` is None where nothing
        is written (ranks other than 0, no TensorBoard), so per-epoch statistics still reset there."""

    # ---- initialisation stage (FitNet, AB, FT, FSP) -------------------------------------------
    def init_parameters(self, model_s: nn.Module) -> list:
        """Parameters trained during the init stage. The student runs in train mode during the
        init stage iff some of its parameters are in this list (RepDistiller's behaviour)."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_lr(self, opt: argparse.Namespace) -> float:
        """Learning rate of the init stage's SGD (RepDistiller: --learning_rate; FT: 0.01 for
        resnet/wrn students)."""
        return opt.learning_rate

    def init_loss(self, s: Outputs, t: Outputs, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares no init stage")

    def finish_init(self) -> None:
        """Called once after the init stage (AB freezes its connectors here)."""


def refuse(message: str) -> None:
    """Raise the one-line error the scripts print for a configuration a method cannot run."""
    raise ConfigError(message)
