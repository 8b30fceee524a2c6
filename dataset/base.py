"""Shared pieces of the data layer: dataset specs, seeds, subsets, shape adaptation.

Input-shape rule (how a dataset is served at a model's ``input_shape = (C, H, W)``)
-----------------------------------------------------------------------------------
* Grey 28x28 datasets (``mnist``, ``fashionmnist``, ``digits``) adapt to any model:
    - channels: C=1 as stored, C=3 by replicating the grey channel (mean/std replicated too);
    - size: 28x28 as stored; 32x32 by zero padding 2 pixels on every side (the pad pixel is 0 in
      [0, 255] *before* normalisation, exactly like CIFAR's crop padding); any other size by
      bilinear resize (float, antialiased when shrinking).
    Augmentation runs first, at the native 28x28; the adaptation comes after it, then normalisation.
* RGB datasets (``cifar10``, ``cifar100``, ``cinic10`` at 3x32x32; ``imagenet`` at 3x224x224) are
  served at their native shape only; a model asking for anything else is a ``ConfigError``.
* Own folder datasets (``imagefolder``, ``tinyimagenet``; :mod:`dataset.imagefolder`) are read at any
  size and resized (bilinear) to the served size: ``--image_size``, else tinyimagenet's 64x64 and, for
  imagefolder, the model's input size. A model declared for another size is kept if a probe forward at
  the served size works (global pooling), else refused (:func:`dataset.fit_models`).

Augmentation (training set only; test sets are never augmented)
----------------------------------------------------------------
* cifar10/cifar100/cinic10: random crop 32 with zero padding 4 + horizontal flip (RepDistiller).
* imagenet: RandomResizedCrop(224) (scale (0.08, 1), ratio (3/4, 4/3)) + flip; val Resize 256 +
  CenterCrop 224.
* fashionmnist: random crop 28 with zero padding 2 + horizontal flip (garments are left/right
  symmetric classes, a flip keeps the label).
* mnist and digits: random crop 28 with zero padding 2, **no flip** (a flipped 2/3/7 is not a digit).
* imagefolder: random crop with zero padding size/8 (CIFAR's 4 at 32) + flip.
* tinyimagenet: mdistiller's recipe, random rotation up to 20 degrees (nearest, zero fill) + flip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from helper.errors import ConfigError

MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix64 chain): distinct tuples, unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & MASK64)) & MASK64
        h = (h + 0x9E3779B97F4A7C15) & MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        h = z ^ (z >> 31)
    return h >> 1


# stream tags, so that order, augmentation, contrast and strong-view draws never share a generator state
STREAM_AUG, STREAM_CONTRAST, STREAM_SUBSET, STREAM_STRONG = 1, 2, 3, 4


@dataclass
class ArraySplit:
    """One split held in memory: uint8 images (N, H, W, C) and int64 targets (N,)."""

    images: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: np.ndarray) -> "ArraySplit":
        return ArraySplit(self.images[idx], self.targets[idx])


@dataclass(frozen=True)
class DatasetSpec:
    """What the loaders need to know about one ``--dataset`` name."""

    name: str
    num_classes: int
    shape: tuple  # native (C, H, W)
    mean: tuple
    std: tuple
    kind: str  # 'memory': arrays in RAM; 'folder': an ImageFolder tree read per sample
    load: Callable  # data_folder -> (train, val): ArraySplits (memory) or ImageFolder-like file lists (folder)
    crop_pad: int = 0  # random crop at native size with this zero padding (0: none)
    flip: bool = False
    resized_crop: bool = False  # ImageNet recipe instead of crop/flip
    adaptable: bool = False  # grey 28x28 datasets adapt to any input shape
    rotate: float = 0.0  # random rotation by up to this many degrees, nearest, zero fill (Tiny-ImageNet)
    load_resize: bool = False  # files of any size, resized to ``shape`` when read (own folder datasets)
    memory_bytes: int = 0  # decoded size of both splits at ``shape`` when known (tensor loader's budget)


@dataclass(frozen=True)
class Adaptation:
    """How a batch at native shape becomes a batch at the model's shape (see module docstring)."""

    channels: int  # output channels (1 or 3); > native channels means replicate
    size: tuple  # output (H, W)
    pad: int  # zero padding applied to the uint8 image (28 -> 32)
    resize: bool  # bilinear resize to `size` after padding

    @property
    def identity(self) -> bool:
        return not self.pad and not self.resize


def plan_adaptation(spec: DatasetSpec, input_shape) -> Adaptation:
    c0, h0, w0 = spec.shape
    if input_shape is None:
        return Adaptation(c0, (h0, w0), 0, False)
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if not spec.adaptable:
        if (c, h, w) != (c0, h0, w0):
            raise ConfigError(
                f"the model expects input {c}x{h}x{w} but --dataset {spec.name} serves {c0}x{h0}x{w0} "
                f"images; pick a model built for {c0}x{h0}x{w0} input (or a grey dataset, which adapts)")
        return Adaptation(c, (h, w), 0, False)
    if c not in (1, 3) or h < 1 or w < 1:
        raise ConfigError(f"--dataset {spec.name} can be served with 1 or 3 channels, "
                          f"the model expects input {c}x{h}x{w}")
    if (h, w) == (h0, w0):
        return Adaptation(c, (h, w), 0, False)
    if (h, w) == (h0 + 4, w0 + 4):
        return Adaptation(c, (h, w), 2, False)
    return Adaptation(c, (h, w), 0, True)


def stratified_subset(targets: np.ndarray, n: int, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices of a stratified random subset of size ``n``, a function of (targets, n, seed).

    Each class gets its share of ``n`` in proportion to its frequency (largest remainder), the
    members of each class are drawn without replacement by a generator seeded from ``seed``.
    """
    targets = np.asarray(targets)
    total = len(targets)
    if n > total:
        raise ConfigError(f"--train_subset {n} is larger than the training set ({total} samples)")
    if n == total:
        return np.arange(total)
    counts = np.bincount(targets, minlength=num_classes)
    present = np.flatnonzero(counts)
    if n < len(present):
        raise ConfigError(f"--train_subset {n} is smaller than the number of classes ({len(present)}); "
                          "a stratified subset needs at least one sample per class")
    quota = counts * n / total
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    order = np.lexsort((np.arange(len(counts)), -(quota - take)))  # largest remainder, ties by class id
    take[order[:rest]] += 1
    # at least one per present class, taken from the largest quotas
    for c in present[take[present] == 0]:
        donor = int(np.argmax(take))
        take[donor] -= 1
        take[c] += 1
    rng = np.random.default_rng(mix_seed(seed, n, STREAM_SUBSET))
    chosen = []
    for c in present:
        members = np.flatnonzero(targets == c)
        chosen.append(rng.choice(members, size=int(take[c]), replace=False))
    return np.sort(np.concatenate(chosen))


MEMORY_FRACTION = 0.5  # of the available host RAM (and free GPU memory) a decoded split set may take


def memory_budget(device) -> int:
    """Bytes the tensor loader may hold: MEMORY_FRACTION of the available RAM, and of the free memory of a
    CUDA device (the decoded images live there)."""
    import os

    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        avail = 1 << 62
    device = torch.device(device)
    if device.type == "cuda":
        avail = min(avail, torch.cuda.mem_get_info(device)[0])
    return int(MEMORY_FRACTION * avail)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    batch_size, world_size = int(batch_size), int(world_size)
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be positive, got {batch_size}")
    if batch_size % world_size:
        raise ConfigError(f"--batch_size {batch_size} is the global batch and must be divisible by the "
                          f"world size {world_size}")
    return batch_size // world_size


def num_batches(n: int, batch: int, drop_last: bool) -> int:
    return n // batch if drop_last else math.ceil(n / batch)


class ShardSampler(torch.utils.data.Sampler):
    """Exact, non-overlapping shard ``rank::world_size`` of ``range(n)``, no padding duplicates."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def default_train_sampler(n: int, seed: int, rank: int, world_size: int, drop_last: bool):
    """torch's DistributedSampler over ``range(n)``; with world_size 1 it is a seeded shuffle."""
    return torch.utils.data.DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                               seed=seed, drop_last=drop_last)
