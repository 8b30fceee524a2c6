"""The 'tensor' loader: the whole split resident on the device as one uint8 tensor (airbench style).

Batches are gathered by index and augmented, adapted and normalised in batch with tensor ops
(:class:`dataset.transforms.BatchTransform`); no workers, no per-sample Python, no host-to-device
copies on CUDA. Everything an epoch yields is a function of (seed, rank, epoch):

* order: the indices of torch's ``DistributedSampler(range(n), num_replicas=world_size, rank=rank,
  shuffle=True, seed=seed, drop_last=drop_last)`` after ``set_epoch(epoch)``, i.e. exactly what the
  'torch' loader and DDP see; or those of a caller-given ``sampler``;
* augmentation and CRD's contrast indices: device generators seeded by ``mix_seed(seed, rank, epoch, stream)``;
* the strong view (``--strong_aug``, :mod:`dataset.randaugment`): a CPU generator seeded by
  ``mix_seed(seed, rank, epoch, STREAM_STRONG)`` (its per-sample op choices are grouped on the host, with
  no device sync); the weak view's draws are the same whether it is on or not.

So resuming at an epoch boundary replays the same batches as an uninterrupted run.
"""
from __future__ import annotations

import torch

from .base import STREAM_AUG, STREAM_CONTRAST, STREAM_STRONG, ArraySplit, ShardSampler, mix_seed, num_batches
from .transforms import BatchTransform


def to_device_nchw(split: ArraySplit, device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous().to(device)
    targets = torch.from_numpy(split.targets).long().to(device)
    return images, targets


def _generator(device, seed: int) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


class TensorTrainLoader:
    """Yields ``(images, targets, index)`` or ``(images, targets, index, contrast_idx)``, all on device;
    ``images`` is the pair ``(weak, strong)`` when a ``strong`` transform (StrongBatchTransform) is given."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: BatchTransform, *, batch_size: int,
                 sampler, seed: int, rank: int = 0, drop_last: bool = False, contrast=None, strong=None):
        self.images, self.targets = images, targets
        self.transform = transform
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.seed, self.rank = int(seed), int(rank)
        self.drop_last = bool(drop_last)
        self.contrast = contrast
        self.strong = strong
        self.epoch = 0
        self.device = images.device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def epoch_indices(self) -> torch.Tensor:
        """The dataset positions this rank visits this epoch, in order (before dropping a last partial batch)."""
        return torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)

    def __len__(self) -> int:
        return num_batches(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self):
        order = self.epoch_indices().to(self.device)
        aug = _generator(self.device, mix_seed(self.seed, self.rank, self.epoch, STREAM_AUG))
        con = _generator(self.device, mix_seed(self.seed, self.rank, self.epoch, STREAM_CONTRAST))
        strong = None if self.strong is None else _generator(
            "cpu", mix_seed(self.seed, self.rank, self.epoch, STREAM_STRONG))
        bs = self.batch_size
        for i in range(num_batches(len(order), bs, self.drop_last)):
            idx = order[i * bs:(i + 1) * bs]
            raw = self.images.index_select(0, idx)
            x = self.transform(raw, aug)
            if self.strong is not None:
                x = (x, self.strong(raw, strong))
            y = self.targets.index_select(0, idx)
            if self.contrast is None:
                yield x, y, idx
            else:
                yield x, y, idx, self.contrast(idx, con)


class TensorValLoader:
    """Yields ``(images, targets)`` of this rank's exact shard ``rank::world_size`` (no augmentation)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: BatchTransform, *, batch_size: int,
                 rank: int = 0, world_size: int = 1):
        self.images, self.targets = images, targets
        self.transform = transform
        self.batch_size = int(batch_size)
        self.shard = torch.as_tensor(list(ShardSampler(len(targets), rank, world_size)), dtype=torch.long,
                                     device=images.device)

    def __len__(self) -> int:
        return num_batches(len(self.shard), self.batch_size, False)

    def __iter__(self):
        bs = self.batch_size
        for i in range(len(self)):
            idx = self.shard[i * bs:(i + 1) * bs]
            yield self.transform(self.images.index_select(0, idx)), self.targets.index_select(0, idx)
