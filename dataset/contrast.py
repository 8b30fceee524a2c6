"""CRD's contrastive indices drawn by the loader (``--crd_sampler dataset``): RepDistiller's place for them.

The draw itself is crd/memory.py's :class:`ClassNegativeSampler` (RepDistiller's ``CIFAR100InstanceSample``
semantics: K distinct negatives of the other classes per anchor, with replacement only when fewer exist;
``--crd_negatives iid`` for i.i.d. draws), made for the whole batch at once on the loader's device from a
generator seeded by (seed, rank, epoch).
"""
from __future__ import annotations

import torch

from crd.memory import ClassNegativeSampler
from helper.errors import ConfigError


class ContrastSampler:
    def __init__(self, targets: torch.Tensor, k: int, mode: str = "exact", device="cpu",
                 negatives: str = "distinct"):
        try:
            self.sampler = ClassNegativeSampler(targets, k, mode, negatives).to(device)
        except ValueError as e:
            raise ConfigError(f"crd: {e}") from None
        self.targets = self.sampler.targets

    def __call__(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) dataset positions -> (B, K+1) LongTensor on the sampler's device."""
        index = index.to(self.targets.device)
        return self.sampler.draw(self.targets[index], index, generator)
