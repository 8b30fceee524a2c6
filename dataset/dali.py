"""NVIDIA DALI loaders (``--dali cpu|gpu``): the 'torch'/'tensor' loaders' batches, built by a DALI pipeline.

Only imported when ``opt.dali`` is set, and ``nvidia.dali`` itself only inside :func:`check_dali` and the
loaders, so the package stays optional (``pip install nvidia-dali-cuda120``).

Datasets: cifar10, cifar100 (``fn.external_source`` over the pickle arrays that :mod:`dataset.cifar`
already holds in memory), cinic10, imagenet, imagefolder and tinyimagenet (``fn.readers.file`` over the
file lists: the same files, class mapping and ``--train_subset`` as the 'torch' loader). The grey
datasets are refused (use the default tensor loader). Graph, per sample:

* cifar10/100, cinic10 train: zero-pad-4 random crop, horizontal flip (``fn.random.coin_flip``),
  normalise (``fn.crop_mirror_normalize``, float32 CHW); val: normalise only. The crop: for CIFAR the
  array is zero-padded once and the crop is crop_mirror_normalize's 32x32 window at an offset uniform on
  {0..8}^2; for cinic10 ``fn.slice`` at an anchor uniform on {-4..4}^2 with ``out_of_bounds_policy="pad"``.
* imagefolder, tinyimagenet: decode, ``fn.resize`` to the served size (linear, antialiased, as PIL's
  bilinear); then imagefolder as cinic10 (zero-pad crop by size/8, flip), tinyimagenet ``fn.rotate`` by an
  angle uniform on [-20, 20] (nearest, zero fill, same size) and flip; val: resize and normalise.
* imagenet train: ``fn.decoders.image_random_crop`` with torchvision's RandomResizedCrop defaults
  (area (0.08, 1), aspect ratio (3/4, 4/3) log-uniform, 10 attempts), ``fn.resize`` to 224x224
  (linear, antialiased, as PIL's bilinear), flip, normalise; val: resize the shorter side to 256,
  centre crop 224, normalise. With ``--dali gpu`` the decoder is ``mixed`` (nvJPEG) and everything after
  it runs on the GPU. Differences from torchvision: the window sizes follow the same distribution, but
  when 10 attempts fail both fall back to the whole image with the ratio clamped, torchvision at the
  centre, DALI's crop generator at a random position (checked on a 10x1000 shape); the resized long side
  and the centre-crop offset may round differently by one pixel; the decoders (libjpeg-turbo/nvJPEG vs
  PIL) differ in the last bits.

Batches are those of the other loaders (see :mod:`dataset`): train ``(images, targets, index)``, val
``(images, targets)``, float32 normalised NCHW at the dataset's native shape; on the GPU with ``--dali
gpu`` (every tensor), on the CPU with ``--dali cpu``. ``index`` is the training-set position: the file
reader is given the file list in the sampler's order with each file's position as its "label" (and the
external source passes the positions along), so ``targets = train_targets[index]`` exactly.

Order and sharding: not the reader's own ``shard_id/num_shards/random_shuffle`` (contiguous shards and a
local shuffle buffer of ``initial_fill`` samples), but the sampler the other loaders use: torch's
``DistributedSampler(shuffle=True, seed, drop_last)`` (or the caller's ``train_sampler``) after
``set_epoch``. So every rank sees exactly the indices, in the order, of the 'torch' and 'tensor' loaders,
all ranks the same number of batches. The reader then reads this rank's list unsharded and unshuffled
(``num_shards=1``). Validation: the exact shard ``rank::world_size``, in order.

Reproducibility. One pipeline is built per pass (10-20 ms for the CPU one here; an interrupted pass
leaves nothing behind), seeded by ``mix_seed(seed, rank, epoch)``. DALI draws each sample's crop/flip
from per-sample generators, so an epoch's batches are a function of (seed, rank, epoch, per-rank batch
size, dataset), not of ``num_threads`` nor of the epochs run before: a run resumed at an epoch boundary
sees the batches of an uninterrupted one (checked on the CPU backend). Not reproducible: the same
batches across DALI versions or between ``cpu`` and ``gpu`` (other decoders and resize kernels); and the
augmentation is not the 'tensor'/'torch' loaders' draws (same distributions, other random streams).
Validation is deterministic. CRD (``contrast=True``) is refused.

Threads: ``max(1, --num_workers)`` DALI CPU threads per process; prefetch depth 2.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from helper.errors import ConfigError

from .base import STREAM_AUG, DatasetSpec, ShardSampler, mix_seed, num_batches

__all__ = ["DALI_DATASETS", "check_dali", "dali_loaders", "import_dali", "DaliTrainLoader", "DaliValLoader"]

DALI_DATASETS = ("cifar10", "cifar100", "cinic10", "imagenet", "imagefolder", "tinyimagenet")
INSTALL = "pip install nvidia-dali-cuda120"
# torchvision RandomResizedCrop defaults
RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RESIZE_SHORTER = 256  # torchvision val recipe: Resize(256) + CenterCrop(224)
# nvJPEG buffer padding of DALI's ResNet-50 example (avoids reallocations on large ImageNet images)
_NVJPEG_PAD = dict(device_memory_padding=211025920, host_memory_padding=140544512)


def import_dali() -> SimpleNamespace:
    """The DALI modules this file uses; a one-line ConfigError when the package cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401  (the top-level package first: a missing one is reported as such)
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except (ImportError, OSError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--dali needs NVIDIA DALI, which cannot be imported ({why}); "
                          f"{INSTALL}, or drop --dali") from None
    return SimpleNamespace(fn=fn, types=types, pipeline_def=pipeline_def, Iterator=DALIGenericIterator,
                           PARTIAL=LastBatchPolicy.PARTIAL)


def check_dali(mode: str, spec: DatasetSpec, device, *, contrast: bool = False, loader: str = "auto"):
    """Refuse what the DALI loaders cannot serve (one clear line each), then import DALI."""
    if mode not in ("cpu", "gpu"):
        raise ConfigError(f"--dali must be cpu or gpu, got {mode!r}")
    if spec.name not in DALI_DATASETS:
        raise ConfigError(f"--dali serves {', '.join(DALI_DATASETS)}, not --dataset {spec.name}; drop --dali "
                          "(the default tensor loader is the fast path for it)")
    if contrast:
        raise ConfigError("--dali cannot serve CRD's contrast indices (--distill crd); drop --dali "
                          "(the tensor/torch loaders draw them)")
    if loader not in ("auto", None, ""):
        raise ConfigError(f"--dali replaces the loader; drop --loader {loader} (or drop --dali)")
    if mode == "gpu":
        device = torch.device(device)
        if not torch.cuda.is_available():
            raise ConfigError("--dali gpu needs CUDA, which this machine does not have; use --dali cpu")
        if device.type != "cuda":
            raise ConfigError(f"--dali gpu needs the run on a CUDA device, it runs on {device}; use --dali cpu")
    return import_dali()


def _dali_seed(*values: int) -> int:
    return mix_seed(*values) & 0x7FFFFFFF


class _Pipe:
    """Builds one pipeline and iterator per pass over a list of dataset positions."""

    def __init__(self, d: SimpleNamespace, spec: DatasetSpec, source, *, mode: str, train: bool,
                 batch_size: int, num_threads: int, device):
        self.d, self.spec, self.source = d, spec, source
        self.memory = isinstance(source, np.ndarray)  # (N, H, W, C) uint8, else a list of file paths
        self.gpu, self.train = mode == "gpu", train
        self.prepad = spec.crop_pad if self.memory and train else 0
        if self.prepad:  # padded once (+56% memory): the crop is then crop_mirror_normalize's
            # window, one op instead of fn.slice + CMN (measured: 15 vs 20 CPU-us per image)
            p = self.prepad
            self.source = np.pad(source, ((0, 0), (p, p), (p, p), (0, 0)))
        self.batch_size, self.num_threads = int(batch_size), max(1, int(num_threads))
        device = torch.device(device)
        self.device_id = None
        if self.gpu:
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
        self.out_device = torch.device("cuda", self.device_id) if self.gpu else torch.device("cpu")

    def _graph(self, positions: np.ndarray):
        fn, types = self.d.fn, self.d.types
        spec, gpu, train = self.spec, self.gpu, self.train
        _, h0, w0 = spec.shape
        if self.memory:
            images, index = fn.external_source(source=self._batches(positions), num_outputs=2, batch=True,
                                               layout=["HWC", ""], dtype=[types.UINT8, types.INT64])
            if gpu:
                images = images.gpu()
        else:
            encoded, index = fn.readers.file(files=[self.source[i] for i in positions],
                                             labels=[int(i) for i in positions], random_shuffle=False,
                                             pad_last_batch=True, name="Reader")
            dec = dict(device="mixed", **_NVJPEG_PAD) if gpu else dict(device="cpu")
            if train and spec.resized_crop:
                images = fn.decoders.image_random_crop(encoded, output_type=types.RGB, random_area=list(RRC_AREA),
                                                       random_aspect_ratio=list(RRC_RATIO), num_attempts=10, **dec)
            else:
                images = fn.decoders.image(encoded, output_type=types.RGB, **dec)
            if spec.load_resize:  # own folder datasets: any size, resized to the served one
                images = fn.resize(images, resize_x=w0, resize_y=h0, interp_type=types.INTERP_LINEAR, antialias=True)
        if train and spec.rotate:
            images = fn.rotate(images, angle=fn.random.uniform(range=[-spec.rotate, spec.rotate]), keep_size=True,
                               fill_value=0, interp_type=types.INTERP_NN)
        crop, crop_pos = None, {}
        if spec.resized_crop:
            interp = dict(interp_type=types.INTERP_LINEAR, antialias=True)
            if train:
                images = fn.resize(images, resize_x=w0, resize_y=h0, **interp)
            else:
                images = fn.resize(images, resize_shorter=RESIZE_SHORTER, **interp)
                crop = (h0, w0)  # centre crop in crop_mirror_normalize
        elif self.prepad:  # window offset k/(2p) * 2p = k, k uniform on {0..2p}: RandomCrop(padding=p)
            steps = [k / (2 * self.prepad) for k in range(2 * self.prepad + 1)]
            crop = (h0, w0)
            crop_pos = dict(crop_pos_x=fn.random.uniform(values=steps), crop_pos_y=fn.random.uniform(values=steps))
        elif train and spec.crop_pad:
            p = spec.crop_pad
            anchor = fn.random.uniform(values=list(range(-p, p + 1)), shape=(2,), dtype=types.INT32)
            images = fn.slice(images, start=anchor, shape=[h0, w0], axis_names="HW", out_of_bounds_policy="pad",
                              fill_values=0)
        mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32) if train and spec.flip else 0
        cmn = dict(crop=crop, **crop_pos) if crop else {}
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                          mean=[255.0 * m for m in spec.mean], std=[255.0 * s for s in spec.std],
                                          **cmn)
        return images, (index.gpu() if gpu else index)

    def _batches(self, positions: np.ndarray):
        bs = self.batch_size
        for i in range(0, len(positions), bs):
            idx = positions[i:i + bs]
            yield self.source[idx], idx.astype(np.int64)

    def run(self, positions: np.ndarray, seed: int):
        """Yield (images, index) torch tensors for ``positions`` in order, in batches."""
        if len(positions) == 0:
            return
        pipe = self.d.pipeline_def(self._graph)(positions, batch_size=self.batch_size, num_threads=self.num_threads,
                                                device_id=self.device_id, seed=seed, prefetch_queue_depth=2)
        epoch = dict(reader_name="Reader") if not self.memory else dict(size=-1)
        it = self.d.Iterator(pipe, ["images", "index"], last_batch_policy=self.d.PARTIAL, auto_reset=False, **epoch)
        try:
            for out in it:
                yield out[0]["images"], out[0]["index"].reshape(-1).long()
        finally:
            del it, pipe


class DaliTrainLoader:
    """Yields ``(images, targets, index)``; order from ``sampler`` (after ``set_epoch``), see module doc."""

    def __init__(self, pipe: _Pipe, targets: torch.Tensor, *, sampler, seed: int, rank: int = 0,
                 drop_last: bool = False):
        self.pipe = pipe
        self.targets = targets.to(pipe.out_device)
        self.sampler = sampler
        self.seed, self.rank = int(seed), int(rank)
        self.batch_size, self.drop_last = pipe.batch_size, bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def epoch_indices(self) -> np.ndarray:
        """The dataset positions this rank visits this epoch, in order (before dropping a last partial batch)."""
        return np.asarray(list(iter(self.sampler)), dtype=np.int64)

    def __len__(self) -> int:
        return num_batches(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self):
        order = self.epoch_indices()
        if self.drop_last:
            order = order[:len(order) // self.batch_size * self.batch_size]
        for x, idx in self.pipe.run(order, _dali_seed(self.seed, self.rank, self.epoch, STREAM_AUG)):
            yield x, self.targets.index_select(0, idx), idx


class DaliValLoader:
    """Yields ``(images, targets)`` of this rank's exact shard ``rank::world_size``, in order."""

    def __init__(self, pipe: _Pipe, targets: torch.Tensor, *, rank: int = 0, world_size: int = 1):
        self.pipe = pipe
        self.targets = targets.to(pipe.out_device)
        self.shard = np.asarray(list(ShardSampler(len(targets), rank, world_size)), dtype=np.int64)

    def __len__(self) -> int:
        return math.ceil(len(self.shard) / self.pipe.batch_size)

    def __iter__(self):
        for x, idx in self.pipe.run(self.shard, 0):
            yield x, self.targets.index_select(0, idx)


def dali_loaders(mode: str, spec: DatasetSpec, d: SimpleNamespace, *, train_source, val_source,
                 train_targets, val_targets, sampler, batch_size: int, seed: int, rank: int, world_size: int,
                 drop_last: bool, num_threads: int, device):
    """The DALI train and val loaders. ``*_source``: uint8 (N, H, W, C) arrays or lists of image paths,
    indexed by dataset position; ``*_targets``: the labels in the same order."""
    common = dict(mode=mode, batch_size=batch_size, num_threads=num_threads, device=device)
    if isinstance(train_source, np.ndarray):
        train_source, val_source = (np.ascontiguousarray(train_source, dtype=np.uint8),
                                    np.ascontiguousarray(val_source, dtype=np.uint8))
    train = DaliTrainLoader(_Pipe(d, spec, train_source, train=True, **common),
                            torch.as_tensor(np.asarray(train_targets), dtype=torch.long), sampler=sampler,
                            seed=seed, rank=rank, drop_last=drop_last)
    val = DaliValLoader(_Pipe(d, spec, val_source, train=False, **common),
                        torch.as_tensor(np.asarray(val_targets), dtype=torch.long), rank=rank,
                        world_size=world_size)
    return train, val
