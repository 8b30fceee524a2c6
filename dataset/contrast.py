"""CRD's contrastive indices, drawn for a whole batch at once (both loaders use this).

Semantics of RepDistiller's ``CIFAR100InstanceSample`` (built from ``targets``, not the dead
``train_labels``): for a sample of class y at dataset position i, row ``[pos, neg_1 .. neg_K]`` where

* ``pos`` is i itself (``mode='exact'``) or a uniformly random sample of class y (``mode='relax'``);
* the K negatives are a uniformly random K-subset (no repeats) of the samples of all other classes,
  or K independent uniform draws with replacement when that pool is smaller than K (RepDistiller's
  ``replace = K > len(cls_negative[y])``).

RepDistiller draws per sample with ``np.random.choice`` in the workers (a full permutation per sample).
Here a batch draws one uniform key per (row, training sample), masks the anchor's class and keeps the
K largest keys (``topk``): an exact uniform K-subset per row, on the loader's device, from a generator
seeded by (seed, rank, epoch). Rows are processed in chunks so that keys stay under ~64 MB.
"""
from __future__ import annotations

import torch

from helper.errors import ConfigError

_CHUNK_ELEMS = 1 << 24


class ContrastSampler:
    def __init__(self, targets: torch.Tensor, k: int, mode: str = "exact", device="cpu"):
        if mode not in ("exact", "relax"):
            raise ConfigError(f"--mode must be 'exact' or 'relax', got {mode!r}")
        k = int(k)
        if k < 1:
            raise ConfigError(f"--nce_k must be positive, got {k}")
        self.k, self.mode = k, mode
        self.targets = targets.to(device=device, dtype=torch.long)
        n_cls = int(self.targets.max()) + 1 if len(self.targets) else 1
        self.counts = torch.bincount(self.targets, minlength=n_cls)
        self.order = torch.argsort(self.targets, stable=True)  # dataset positions grouped by class
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.pool = len(self.targets) - self.counts  # negatives available per class
        present = self.pool[self.counts > 0]
        if bool((present == 0).any()):
            raise ConfigError("CRD needs at least two classes in the training set to draw negatives")
        # decided once on the host, so that a batch needs no device->host sync in the usual cases
        self._all_subset = bool(present.min() >= k)
        self._no_subset = bool(present.max() < k)

    def __call__(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) dataset positions -> (B, K+1) LongTensor on the sampler's device."""
        dev = self.targets.device
        index = index.to(dev)
        y = self.targets[index]
        b = len(index)
        if self.mode == "exact":
            pos = index
        else:
            r = torch.rand(b, generator=generator, device=dev)
            off = (r * self.counts[y]).long().clamp_max_(self.counts[y] - 1)
            pos = self.order[self.starts[y] + off]
        neg = torch.empty(b, self.k, dtype=torch.long, device=dev)
        all_rows = torch.arange(b, device=dev)
        if self._all_subset or self._no_subset:
            rows = all_rows if self._all_subset else all_rows[:0]
            rest = all_rows[:0] if self._all_subset else all_rows
        else:
            subset_rows = self.pool[y] >= self.k
            rows, rest = all_rows[subset_rows], all_rows[~subset_rows]
        if len(rows):
            n = len(self.targets)
            step = max(1, _CHUNK_ELEMS // max(n, 1))
            for s in range(0, len(rows), step):
                r = rows[s:s + step]
                keys = torch.rand(len(r), n, generator=generator, device=dev)
                keys.masked_fill_(self.targets[None, :] == y[r, None], -1.0)
                neg[r] = keys.topk(self.k, dim=1, sorted=False).indices
        if len(rest):  # with replacement: uniform over the other classes' samples, by skipping class y
            rows = rest
            yr = y[rows]
            u = torch.rand(len(rows), self.k, generator=generator, device=dev)
            j = (u * self.pool[yr, None]).long().clamp_max_(self.pool[yr, None] - 1)
            j = j + (j >= self.starts[yr, None]) * self.counts[yr, None]
            neg[rows] = self.order[j]
        return torch.cat([pos[:, None], neg], dim=1)
