"""The 'torch' loader: torch.utils.data.DataLoader over PIL images and torchvision transforms.

The standard path (and the only one for ImageNet). Order: torch's ``DistributedSampler(shuffle=True,
seed=seed, drop_last=drop_last)`` (with world_size 1 too, so both loaders visit the same indices), or a
caller-given sampler. Augmentation: the sampler hands each worker ``(index, epoch)`` and the sample's
transform runs under the CPU RNG seeded by ``mix_seed(seed, epoch, index)`` (the caller's RNG state is
restored afterwards). A sample's augmentation is then a function of (seed, epoch, index) whatever the
number of workers, persistent or not, so a resumed run replays the same batches. The strong view
(``--strong_aug``) runs its own transform under ``mix_seed(seed, epoch, index, STREAM_STRONG)``: the weak
view is the same whether it is on or not.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import STREAM_CONTRAST, STREAM_STRONG, ShardSampler, mix_seed, num_batches


class EpochTaggedSampler(Sampler):
    """Wraps an index sampler; yields ``(index, epoch)`` so workers know the epoch without shared state."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((int(i), epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededTransformDataset(Dataset):
    """``key -> (image, target, index)`` where ``fetch(index)`` gives a PIL image and ``key`` is
    ``(index, epoch)`` (train) or ``index`` (val). Train transforms are seeded per (seed, epoch, index);
    with a ``strong`` transform (train only) ``image`` is the pair ``(weak, strong)``."""

    def __init__(self, fetch, targets, transform, seed: int, train: bool, strong=None):
        self.fetch, self.targets, self.transform = fetch, targets, transform
        self.seed, self.train = int(seed), train
        self.strong = strong

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key):
        idx, epoch = key if isinstance(key, tuple) else (int(key), 0)
        img = self.fetch(idx)
        if self.train:
            x = _seeded(self.transform, img, mix_seed(self.seed, epoch, idx))
            if self.strong is not None:
                x = (x, _seeded(self.strong, img, mix_seed(self.seed, epoch, idx, STREAM_STRONG)))
            return x, int(self.targets[idx]), idx
        return self.transform(img), int(self.targets[idx])


def _seeded(transform, img, seed: int):
    """``transform(img)`` under torch's default RNG seeded by ``seed``; the caller's RNG state is restored."""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return transform(img)
    finally:
        torch.set_rng_state(state)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)


def _loader_kwargs(num_workers: int, device, seed: int) -> dict:
    kw = dict(num_workers=int(num_workers), pin_memory=torch.device(device).type == "cuda",
              worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(int(seed)))
    if num_workers > 0:
        kw["persistent_workers"] = True
    return kw


class TorchTrainLoader:
    """Yields ``(images, targets, index)`` (CPU tensors, pinned on CUDA) or, with a contrast sampler,
    ``(images, targets, index, contrast_idx)`` where contrast_idx is drawn on the sampler's device;
    ``images`` is the pair ``(weak, strong)`` when the dataset has a strong transform."""

    def __init__(self, dataset: SeededTransformDataset, *, batch_size: int, sampler, num_workers: int, device,
                 seed: int, rank: int = 0, drop_last: bool = False, contrast=None):
        self.sampler = EpochTaggedSampler(sampler)
        self.seed, self.rank = int(seed), int(rank)
        self.contrast = contrast
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 **_loader_kwargs(num_workers, device, seed))

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return num_batches(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self):
        g = None
        if self.contrast is not None:
            g = torch.Generator(device=self.contrast.targets.device)
            g.manual_seed(mix_seed(self.seed, self.rank, self.epoch, STREAM_CONTRAST))
        for x, y, idx in self.loader:
            x = tuple(x) if isinstance(x, list) else x  # default_collate makes the (weak, strong) pair a list
            yield (x, y, idx) if g is None else (x, y, idx, self.contrast(idx, g))


def make_val_loader(dataset: SeededTransformDataset, *, batch_size: int, num_workers: int, device, seed: int,
                    rank: int = 0, world_size: int = 1) -> DataLoader:
    """Exact shard ``rank::world_size`` of the evaluation set, in order, no padding duplicates."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      drop_last=False, **_loader_kwargs(num_workers, device, seed))
