"""Datasets and loaders: one entry point, :func:`get_dataloaders`, two implementations.

``--dataset`` names: cifar10, cifar100, cinic10, imagenet, mnist, fashionmnist (the project's default),
digits, and own image trees: imagefolder, tinyimagenet. Formats and where they are looked for are in the
reader modules (cifar, mnist, digits, folder, imagefolder); the input-shape rule and the augmentation of
each dataset in :mod:`dataset.base`. Own folder datasets take their class count from the folder
(``num_classes(opt)``) and serve one size to every model that takes it (``fit_models``).

Loaders (``opt.loader``):

* ``'tensor'`` (:mod:`dataset.tensor_loader`): the split resident on ``device`` as uint8, batched
  per-sample crop/flip with tensor ops. Default ('auto') for the in-memory datasets cifar10/100, mnist,
  fashionmnist, digits, and for imagefolder/tinyimagenet when decoded they take at most half the free
  memory; also usable for cinic10 (decoded into memory at start-up).
* ``'torch'`` (:mod:`dataset.torch_loader`): DataLoader + PIL + torchvision transforms. Default for the
  folder datasets cinic10 and imagenet (the only choice for imagenet), and for own folder datasets that
  would not fit in memory.
* ``'dali'`` (:mod:`dataset.dali`, ``opt.dali`` = 'cpu' or 'gpu', replaces ``opt.loader``): NVIDIA DALI
  pipelines for cifar10/100, cinic10, imagenet, imagefolder and tinyimagenet, same batches and sampler
  order; no CRD. ``nvidia.dali`` is imported only then.

Train batches: ``(images, targets, index)``, or ``(images, targets, index, contrast_idx)`` with
``contrast=True`` (CRD); ``index`` is the position in the training set (after ``--train_subset``, which
*is* the training set), ``contrast_idx`` is (B, K+1) with the positive in column 0. Val batches:
``(images, targets)`` of this rank's exact shard. Images are float32, normalised, NCHW at the model's
input shape. The tensor loader's tensors are on ``device``; the torch loader's on the CPU (pinned on
CUDA), except ``contrast_idx`` which is drawn on ``device``: move batches with ``.to(device, non_blocking=True)``.
Call ``bundle.set_epoch(epoch)`` before each epoch: order, augmentation and contrast draws are functions
of (seed, epoch), so a run resumed at an epoch boundary sees the batches of an uninterrupted one.

``opt.strong_aug = 'randaugment'`` (tensor and torch loaders): train ``images`` become the pair
``(weak, strong)``, MLKD's second view (:mod:`dataset.randaugment`), drawn from its own seeded stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from helper.errors import ConfigError

from .base import (MEMORY_FRACTION, DatasetSpec, default_train_sampler, memory_budget, per_rank_batch,
                   plan_adaptation, stratified_subset)
from .cifar import load_cifar
from .contrast import ContrastSampler
from .digits import load_digits_arrays
from .folder import decode_folder, image_folders
from .imagefolder import OWN_DATASETS, build_spec, scan, served_size
from .mnist import load_idx_dataset
from .randaugment import strong_view_asked

__all__ = ["DATASETS", "OWN_DATASETS", "DataBundle", "fit_models", "get_dataloaders", "native_shape", "num_classes"]

_CIFAR_AUG = dict(crop_pad=4, flip=True)

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "memory", partial(load_cifar, "cifar10"), **_CIFAR_AUG),
    "cifar100": DatasetSpec("cifar100", 100, (3, 32, 32), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                            "memory", partial(load_cifar, "cifar100"), **_CIFAR_AUG),
    # CINIC-10's published statistics (BayesWatch/cinic-10 README)
    "cinic10": DatasetSpec("cinic10", 10, (3, 32, 32), (0.47889522, 0.47227842, 0.43047404),
                           (0.24205776, 0.23828046, 0.25874835), "folder", partial(image_folders, "cinic10"),
                           **_CIFAR_AUG),
    "imagenet": DatasetSpec("imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "folder", partial(image_folders, "imagenet"), resized_crop=True, flip=True),
    "mnist": DatasetSpec("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "memory",
                         partial(load_idx_dataset, "mnist"), crop_pad=2, flip=False, adaptable=True),
    "fashionmnist": DatasetSpec("fashionmnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "memory",
                                partial(load_idx_dataset, "fashionmnist"), crop_pad=2, flip=True, adaptable=True),
    # statistics of the 28x28 training images built by dataset.digits
    "digits": DatasetSpec("digits", 10, (1, 28, 28), (0.1557,), (0.2772,), "memory",
                          lambda data_folder, download=False: load_digits_arrays(), crop_pad=2, flip=False,
                          adaptable=True),
}


def native_shape(name: str) -> tuple:
    """The (C, H, W) a dataset is stored at."""
    return _spec(name).shape


def num_classes(dataset) -> int:
    """The class count of a ``--dataset`` name, or of ``opt`` (its dataset and data_folder): own folder
    datasets (imagefolder, tinyimagenet) count their class folders, so they need the opt."""
    name = dataset if isinstance(dataset, str) else getattr(dataset, "dataset", "fashionmnist")
    if name in OWN_DATASETS:
        if isinstance(dataset, str):
            raise ConfigError(f"--dataset {name}: its classes are the class folders of --data_folder; pass the "
                              "options (dataset.num_classes(opt))")
        return len(scan(dataset)[0])
    return _spec(name).num_classes


def fit_models(opt, *named_models) -> None:
    """Own folder datasets serve one size (``dataset.imagefolder.served_size``) to every model, given as
    ``(model_dict name, model)`` pairs (student first; a None model is skipped). A model declared for another
    input size is kept when a probe forward at the served size gives logits (global pooling), and its
    ``input_shape`` becomes the served shape; otherwise one line refuses it. Other datasets: nothing to do
    (their rule is in dataset.base)."""
    named_models = [(n, m) for n, m in named_models if m is not None]
    if getattr(opt, "dataset", None) not in OWN_DATASETS or not named_models:
        return
    shape = (3,) + served_size(opt, named_models[0][1].input_shape)
    for name, m in named_models:
        if tuple(m.input_shape) == shape:
            continue
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad():
                out = m(torch.zeros(2, *shape))
            ok, why = out.dim() == 2 and out.shape[0] == 2, f"logits of shape {tuple(out.shape)}"
        except Exception as e:  # shape errors of fixed pooling/classifier sizes
            ok, why = False, (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        m.train(was_training)
        if not ok and m.input_shape[0] != 3:
            raise ConfigError(f"--dataset {opt.dataset} serves RGB images, {name} takes {m.input_shape[0]}-channel "
                              "input; pick an RGB model")
        if not ok:
            raise ConfigError(f"--dataset {opt.dataset} serves {'x'.join(map(str, shape))} images, which {name} "
                              f"(built for {'x'.join(map(str, m.input_shape))}) does not take ({why}); pass "
                              f"--image_size {m.input_shape[1]} to serve them at its size, or pick another model")
        m.input_shape = shape


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown --dataset {name!r}; choose one of "
                          f"{', '.join(tuple(DATASETS) + OWN_DATASETS)}") from None


@dataclass
class DataBundle:
    train_loader: Any
    val_loader: Any
    num_classes: int
    n_train: int
    train_targets: torch.Tensor  # (n_train,) int64, CPU, in dataset index order
    n_val: int
    loader: str  # 'tensor', 'torch' or 'dali'
    dataset: str
    input_shape: tuple

    plain_train: Any = None  # callable n -> iterable of un-augmented training image batches

    def set_epoch(self, epoch: int) -> None:
        self.train_loader.set_epoch(epoch)

    def plain_train_images(self, n: int):
        """The first ``n`` images of a seeded shuffle of the training set, without augmentation, in
        batches on the training device: one-time statistics before training (cka_group's grouping).
        The same images on every rank, whatever the world size."""
        return self.plain_train(n)


class _ArrayFetch:
    """index -> PIL image of an in-memory split (picklable for DataLoader workers)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, i: int):
        from PIL import Image

        a = self.images[i]
        return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)  # 2-D uint8: "L", H x W x 3: "RGB"


class _FolderFetch:
    """index -> PIL RGB image of an ImageFolder (optionally through a subset's index map)."""

    def __init__(self, ds, positions=None):
        self.paths = [p for p, _ in ds.samples]
        if positions is not None:
            self.paths = [self.paths[j] for j in positions]
        self.load = ds.loader

    def __call__(self, i: int):
        return self.load(self.paths[i])


def _choose_loader(spec: DatasetSpec, asked: str, device="cpu") -> str:
    """'auto': the tensor loader for in-memory datasets, and for own folder datasets when decoded they fit
    the memory budget (dataset.base.memory_budget); the torch loader otherwise. An explicit 'tensor' that
    cannot serve the dataset, or would not fit, is refused."""
    if asked not in ("auto", "torch", "tensor"):
        raise ConfigError(f"--loader must be auto, torch or tensor, got {asked!r}")
    budget = memory_budget(device) if spec.memory_bytes else None
    if asked == "auto":
        if spec.memory_bytes:
            return "tensor" if spec.memory_bytes <= budget else "torch"
        return "tensor" if spec.kind == "memory" else "torch"
    if asked == "tensor" and spec.resized_crop:
        raise ConfigError(f"--loader tensor cannot serve {spec.name} (RandomResizedCrop of full-size images); "
                          "use --loader torch (or auto)")
    if asked == "tensor" and spec.memory_bytes and spec.memory_bytes > budget:
        raise ConfigError(f"--loader tensor: {spec.name} decoded at {'x'.join(map(str, spec.shape[1:]))} takes "
                          f"{spec.memory_bytes / 2**30:.2f} GiB, more than {MEMORY_FRACTION:.0%} of the free memory "
                          f"({budget / 2**30:.2f} GiB allowed); use --loader torch")
    return asked


def get_dataloaders(opt, input_shape=None, *, device="cpu", rank: int = 0, world_size: int = 1,
                    train_sampler=None, contrast: bool = False) -> DataBundle:
    """Build the train and validation loaders of ``opt.dataset`` for one process of ``world_size``.

    Reads opt.dataset, data_folder, batch_size (global), num_workers, data_seed (else seed), train_subset, download,
    loader, drop_last, no_augment (serve training images like test images, still shuffled), and with ``contrast=True`` nce_k, mode and crd_negatives. ``input_shape`` is the model's
    (C, H, W) (None: the dataset's native shape). ``train_sampler`` (any sampler of training-set
    positions, optional ``set_epoch``) replaces the default DistributedSampler order.
    """
    world_size, rank = int(world_size), int(rank)
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    name = getattr(opt, "dataset", "fashionmnist")
    spec = build_spec(opt, input_shape, rank) if name in OWN_DATASETS else _spec(name)
    adapt = plan_adaptation(spec, input_shape)
    batch = per_rank_batch(getattr(opt, "batch_size", 64), world_size)
    kind = _choose_loader(spec, getattr(opt, "loader", "auto") or "auto", device)
    augment = not getattr(opt, "no_augment", False)
    dali_mode = getattr(opt, "dali", None)
    if dali_mode and not augment:
        raise ConfigError("--no_augment is not available with --dali; drop one of them")
    strong = strong_view_asked(opt, dali_mode)
    if dali_mode:  # DALI serves train/val; the torch path below still builds plain_train
        from .dali import check_dali

        dali = check_dali(dali_mode, spec, device, contrast=contrast, loader=getattr(opt, "loader", "auto"))
        kind = "torch"
    data_folder = getattr(opt, "data_folder", None) or "./data"
    download = bool(getattr(opt, "download", False))
    seed = getattr(opt, "data_seed", None)  # the data stream's own seed (default: the run's --seed)
    seed = getattr(opt, "seed", 0) if seed is None else seed
    seed = 0 if seed is None else int(seed)
    num_workers = int(getattr(opt, "num_workers", 0) or 0)
    drop_last = bool(getattr(opt, "drop_last", False))
    subset_n = getattr(opt, "train_subset", None)
    device = torch.device(device)

    # ---- the splits: arrays (memory) or ImageFolders (folder) ----
    train_arr = val_arr = train_ds = val_ds = None
    if spec.kind == "memory":
        train_arr, val_arr = spec.load(data_folder, download=download)
        train_targets_np = train_arr.targets
    else:
        train_ds, val_ds = spec.load(data_folder)
        if kind == "tensor":
            train_arr, val_arr = decode_folder(train_ds, spec.shape), decode_folder(val_ds, spec.shape)
        train_targets_np = np.asarray(train_ds.targets, dtype=np.int64)
    if len(train_targets_np) and int(train_targets_np.max()) >= spec.num_classes:
        raise ConfigError(f"{spec.name}: training labels go up to {int(train_targets_np.max())}, "
                          f"more than its {spec.num_classes} classes")

    positions = None
    if subset_n:
        positions = stratified_subset(train_targets_np, int(subset_n), seed, spec.num_classes)
        train_targets_np = train_targets_np[positions]
        if train_arr is not None:
            train_arr = train_arr.subset(positions)
    n_train = len(train_targets_np)
    if n_train == 0:
        raise ConfigError(f"{spec.name}: the training set is empty")
    train_targets = torch.as_tensor(train_targets_np, dtype=torch.long)

    contrast_sampler = None
    if contrast:
        contrast_sampler = ContrastSampler(train_targets, getattr(opt, "nce_k", 16384), getattr(opt, "mode", "exact"),
                                           device=device, negatives=getattr(opt, "crd_negatives", "distinct"))
    sampler = train_sampler if train_sampler is not None else default_train_sampler(
        n_train, seed, rank, world_size, drop_last)

    if kind == "tensor":
        from .randaugment import StrongBatchTransform
        from .tensor_loader import TensorTrainLoader, TensorValLoader, to_device_nchw
        from .transforms import BatchTransform

        x, y = to_device_nchw(train_arr, device)
        train_tf = BatchTransform(spec, adapt, device, train=augment)
        strong_tf = StrongBatchTransform(train_tf, spec.shape[0]) if strong else None
        train_loader = TensorTrainLoader(x, y, train_tf, batch_size=batch, sampler=sampler, seed=seed, rank=rank,
                                         drop_last=drop_last, contrast=contrast_sampler, strong=strong_tf)
        vx, vy = to_device_nchw(val_arr, device)
        val_tf = BatchTransform(spec, adapt, device, train=False)
        val_loader = TensorValLoader(vx, vy, val_tf, batch_size=batch, rank=rank, world_size=world_size)
        n_val = len(val_arr)

        def plain_train(n):
            for chunk in _plain_order(n_train, n, seed).split(batch):
                yield val_tf(x[chunk.to(x.device)])
    else:
        from .torch_loader import SeededTransformDataset, TorchTrainLoader, make_val_loader
        from .transforms import pil_transforms

        if train_arr is not None:
            fetch_train, fetch_val = _ArrayFetch(train_arr.images), _ArrayFetch(val_arr.images)
            val_targets = val_arr.targets
        else:
            fetch_train, fetch_val = _FolderFetch(train_ds, positions), _FolderFetch(val_ds)
            val_targets = np.asarray(val_ds.targets, dtype=np.int64)
        strong_tf = pil_transforms(spec, adapt, augment, strong=True) if strong else None
        train_set = SeededTransformDataset(fetch_train, train_targets_np, pil_transforms(spec, adapt, augment), seed,
                                           train=True, strong=strong_tf)
        val_set = SeededTransformDataset(fetch_val, val_targets, pil_transforms(spec, adapt, False), seed,
                                         train=False)
        train_loader = TorchTrainLoader(train_set, batch_size=batch, sampler=sampler, num_workers=num_workers,
                                        device=device, seed=seed, rank=rank, drop_last=drop_last,
                                        contrast=contrast_sampler)
        val_loader = make_val_loader(val_set, batch_size=batch, num_workers=num_workers, device=device, seed=seed,
                                     rank=rank, world_size=world_size)
        n_val = len(val_targets)
        plain_set = SeededTransformDataset(fetch_train, train_targets_np, pil_transforms(spec, adapt, False), seed,
                                           train=False)

        def plain_train(n):
            idx = _plain_order(n_train, n, seed).tolist()
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(plain_set, idx), batch_size=batch,
                                                 num_workers=min(num_workers, 4))
            for images, *_ in loader:
                yield images.to(device, non_blocking=True)

    if dali_mode:
        from .dali import dali_loaders

        src = (lambda f: f.images) if train_arr is not None else (lambda f: f.paths)
        train_loader, val_loader = dali_loaders(
            dali_mode, spec, dali, train_source=src(fetch_train), val_source=src(fetch_val),
            train_targets=train_targets_np, val_targets=val_targets, sampler=sampler, batch_size=batch, seed=seed,
            rank=rank, world_size=world_size, drop_last=drop_last, num_threads=num_workers, device=device)
        kind = "dali"

    return DataBundle(train_loader=train_loader, val_loader=val_loader, num_classes=spec.num_classes,
                      n_train=n_train, train_targets=train_targets, n_val=n_val, loader=kind, dataset=spec.name,
                      input_shape=(adapt.channels,) + tuple(adapt.size), plain_train=plain_train)


def _plain_order(n_train: int, n: int, seed: int) -> torch.Tensor:
    """A seeded shuffle of the training positions, cut to the first ``n`` (all if n >= n_train)."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return torch.randperm(n_train, generator=g)[:max(0, min(int(n), n_train))]
