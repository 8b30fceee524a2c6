"""The two implementations of the same image pipeline.

* :func:`pil_transforms`: torchvision transforms on PIL images, for the 'torch' loader.
* :class:`BatchTransform`: the same augmentation, adaptation and normalisation on a whole uint8 batch
  with tensor ops (CPU or CUDA), for the 'tensor' loader. Every sample draws its own crop offsets and
  flip, with the distribution of ``RandomCrop(size, padding=p)`` + ``RandomHorizontalFlip()``: the
  offsets are uniform on ``{0, ..., 2p}`` in each axis, the flip a fair coin, the padding zeros; and its
  own angle for ``RandomRotation(d)`` (uniform on [-d, d], nearest, zero fill), before the crop/flip.

The order is augmentation at native size, then adaptation to the model's shape, then normalisation
(see :mod:`dataset.base` for the input-shape rule).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Adaptation, DatasetSpec


def _norm_stats(spec: DatasetSpec, adapt: Adaptation):
    reps = adapt.channels // spec.shape[0] if adapt.channels > spec.shape[0] else 1
    return tuple(spec.mean) * reps, tuple(spec.std) * reps


def pil_transforms(spec: DatasetSpec, adapt: Adaptation, train: bool, strong: bool = False):
    """The PIL pipeline; ``strong`` adds RandAugment + Cutout after the crop/flip (the second view of
    ``--strong_aug``, :mod:`dataset.randaugment`)."""
    from torchvision import transforms as T

    ops = []
    c0, h0, w0 = spec.shape
    if spec.resized_crop:  # ImageNet
        ops += [T.RandomResizedCrop(h0), T.RandomHorizontalFlip()] if train else [T.Resize(256), T.CenterCrop(h0)]
    elif train:
        if spec.rotate:
            ops.append(T.RandomRotation(spec.rotate, interpolation=T.InterpolationMode.NEAREST, fill=0))
        if spec.crop_pad:
            ops.append(T.RandomCrop((h0, w0), padding=spec.crop_pad))
        if spec.flip:
            ops.append(T.RandomHorizontalFlip())
    if strong:
        from .randaugment import PILRandAugment

        ops.append(PILRandAugment())
    if adapt.pad:
        ops.append(T.Pad(adapt.pad, fill=0))
    if adapt.resize:
        ops.append(T.Resize(adapt.size, interpolation=T.InterpolationMode.BILINEAR))
    if adapt.channels == 3 and c0 == 1:
        ops.append(T.Grayscale(num_output_channels=3))
    mean, std = _norm_stats(spec, adapt)
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip of a uint8 batch (B, C, H, W).

    One gather does both: output pixel (r, c) of sample b reads padded pixel
    (r + dy_b, dx_b + (W - 1 - c if flip_b else c)). No per-sample Python. The draws are made on the
    generator's device (a CPU generator may serve a CUDA batch: copied without a sync).
    """
    b, c, h, w = x.shape
    dev = x.device
    gdev = generator.device if generator is not None else dev
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(dev, non_blocking=True)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(dev, non_blocking=True)
    else:
        dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        flipped = torch.rand(b, generator=generator, device=gdev).to(dev, non_blocking=True) < 0.5
        cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
    cols = cols + dx[:, None]
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None]
    wp = w + 2 * pad
    src = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, -1).gather(2, src).view(b, c, h, w)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of a uint8 batch (B, C, H, W) about its centre by ``degrees[b]`` (counter-clockwise,
    as torchvision's ``rotate``), nearest neighbour, zero fill, same size."""
    b, c, h, w = x.shape
    angle = torch.deg2rad(degrees.float())
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    # output pixel p reads input pixel R(angle)^-1 p, written in affine_grid's normalised coordinates
    theta = torch.stack([torch.stack([cos, -sin * (h / w), zero], 1), torch.stack([sin * (w / h), cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).to(torch.uint8)


def random_rotate(x: torch.Tensor, degrees: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each sample rotated by its own angle uniform on [-degrees, degrees]: ``RandomRotation(degrees)``."""
    angle = (torch.rand(len(x), generator=generator, device=x.device) * 2 - 1) * degrees
    return rotate(x, angle)


class BatchTransform:
    """uint8 (B, C0, H0, W0) -> float32 normalised (B, C, H, W), optionally augmented, on x's device."""

    def __init__(self, spec: DatasetSpec, adapt: Adaptation, device, train: bool):
        if train and spec.resized_crop:
            raise ValueError("RandomResizedCrop is not implemented by the tensor loader")
        self.crop_pad = spec.crop_pad if train else 0
        self.flip = spec.flip and train
        self.rotate = spec.rotate if train else 0.0
        self.adapt = adapt
        c0 = spec.shape[0]
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, c0, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, c0, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std
        self.replicate = adapt.channels // c0 if adapt.channels > c0 else 1

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.finish(self.augment(x, generator))

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random rotation (Tiny-ImageNet) and crop/flip alone (uint8 in and out, native shape)."""
        if self.rotate:
            x = random_rotate(x, self.rotate, generator)
        if self.crop_pad or self.flip:
            x = random_crop_flip(x, self.crop_pad, self.flip, generator)
        return x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Adaptation to the model's shape, then normalisation: uint8 -> float32."""
        if self.adapt.pad:
            p = self.adapt.pad
            x = F.pad(x, (p, p, p, p))
        x = x.float()
        if self.adapt.resize:
            x = F.interpolate(x, size=self.adapt.size, mode="bilinear", align_corners=False, antialias=True)
        x = torch.addcmul(-self.shift, x, self.scale)
        if self.replicate > 1:
            x = x.repeat(1, self.replicate, 1, 1)
        return x
