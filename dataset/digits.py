"""scikit-learn's 1,797 8x8 digits, a zero-install fallback for tests (never evidence).

The 8x8 images (values 0..16) are scaled to 0..255, resized bilinearly to 20x20 and centred in a
28x28 frame with a 4-pixel zero border, the framing of MNIST, so that they are a grey 28x28 dataset
like the other two (same input-shape rule). The train/test split is fixed (1,437 / 360, stratified,
seed 0), independent of ``--seed``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from helper.errors import ConfigError

from .base import ArraySplit

N_TEST = 360
SPLIT_SEED = 0


def load_digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("--dataset digits needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) * (255.0 / 16.0))[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)).round().clamp_(0, 255).to(torch.uint8)
    images = x.permute(0, 2, 3, 1).contiguous().numpy()
    targets = np.asarray(bunch.target, dtype=np.int64)

    # fixed stratified split: per class, a seeded share of N_TEST goes to the test set
    rng = np.random.default_rng(SPLIT_SEED)
    counts = np.bincount(targets, minlength=10)
    quota = counts * N_TEST / len(targets)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: N_TEST - int(take.sum())]] += 1
    test_idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(targets == c), int(take[c]), replace=False)
                                       for c in range(10)]))
    mask = np.ones(len(targets), dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    return ArraySplit(images[train_idx], targets[train_idx]), ArraySplit(images[test_idx], targets[test_idx])
