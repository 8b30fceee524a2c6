"""Mixup (Zhang et al. 2018) as a batch transform: teacher and student see the same mixed images."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from distiller_zoo.base import Batch


class Mixup:
    def __init__(self, alpha: float, seed: int = 0):
        self.alpha = alpha
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Mixing weights derived from (seed, epoch): a resumed run draws the same ones."""
        self.rng = np.random.default_rng([self.seed, epoch])

    def __call__(self, batch: Batch) -> Batch:
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(batch.images.size(0), device=batch.images.device)
        images = lam * batch.images + (1.0 - lam) * batch.images[perm]
        return dataclasses.replace(batch, images=images, mix_targets=batch.targets[perm], mix_lam=lam)
