"""Mixup (Zhang et al. 2018) as a batch transform: teacher and student see the same mixed images.

It is part of the data stream: the mixing weight and the pairing of every batch are functions of
(data seed, epoch, batch number), drawn from generators of its own, so a resumed run and every student of
a group see the same mixed batches, and no student's random stream is consumed.
"""
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
        """Mixing weights and pairings derived from (seed, epoch): a resumed run draws the same ones."""
        self.rng = np.random.default_rng([self.seed, epoch])
        self._gen = None

    def __call__(self, batch: Batch) -> Batch:
        lam = float(self.rng.beta(self.alpha, self.alpha))
        dev = batch.images.device
        if self._gen is None:
            self._gen = torch.Generator(device=dev)
            self._gen.manual_seed(int(self.rng.integers(0, 2 ** 62)))
        perm = torch.randperm(batch.images.size(0), device=dev, generator=self._gen)
        images = lam * batch.images + (1.0 - lam) * batch.images[perm]
        return dataclasses.replace(batch, images=images, mix_targets=batch.targets[perm], mix_lam=lam)
