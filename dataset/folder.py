"""ImageFolder datasets: CINIC-10 (``train/ valid/ test/``) and ImageNet (``train/ val/``).

Each split is a ``class_name/image`` tree (torchvision ImageFolder). The root is ``--data_folder``
itself or one of its sub-folders named after the dataset. CINIC-10 trains on ``train/`` and evaluates
on ``test/`` (``valid/`` is not used); ImageNet evaluates on ``val/`` (sorted into class folders).
"""
from __future__ import annotations

import os

import numpy as np

from helper.errors import ConfigError

from .base import ArraySplit

_LAYOUT = {
    # name: (sub-folders tried under --data_folder, train split, eval split, how to get it)
    "cinic10": (("cinic10", "CINIC-10", "cinic-10"), "train", "test",
                "download CINIC-10 (github.com/BayesWatch/cinic-10) and extract it there"),
    "imagenet": (("imagenet", "ImageNet", "ILSVRC2012"), "train", "val",
                 "put the ILSVRC2012 train/ and val/ folders there, val/ sorted into class sub-folders"),
}


def find_root(name: str, data_folder: str) -> tuple[str, str]:
    subs, train, val, how = _LAYOUT[name]
    for root in (data_folder,) + tuple(os.path.join(data_folder, s) for s in subs):
        if os.path.isdir(os.path.join(root, train)) and os.path.isdir(os.path.join(root, val)):
            return os.path.join(root, train), os.path.join(root, val)
    raise ConfigError(f"{name} not found: looked in {data_folder} (and its {'/'.join(subs[:1])} sub-folder) "
                      f"for the ImageFolder splits {train}/ and {val}/; {how}")


def image_folders(name: str, data_folder: str):
    """The (train, eval) ImageFolders of cinic10 or imagenet under ``data_folder``."""
    train_root, val_root = find_root(name, data_folder)
    return image_folder(train_root), image_folder(val_root)


def image_folder(path: str):
    """torchvision ImageFolder (raw PIL images, no transform), with a one-line error when empty."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(path)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"{path}: not a usable ImageFolder tree ({e})") from None


def decode_folder(ds, shape) -> ArraySplit:
    """Decode a whole ImageFolder (or own file list) into memory through its ``loader``, for the tensor
    loader: uint8 (N, H, W, C). An image that cannot be decoded is one line naming it."""
    c, h, w = shape
    images = np.empty((len(ds), h, w, c), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            arr = np.asarray(ds.loader(path).convert("RGB" if c == 3 else "L"))
        except Exception as e:  # OSError (truncated, not an image), ValueError, SyntaxError from PIL
            raise ConfigError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]}); replace or "
                              "remove it") from None
        if arr.shape[:2] != (h, w):
            raise ConfigError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, the tensor loader needs {w}x{h} "
                              "images (use --loader torch)")
        images[i] = arr.reshape(h, w, c)
    return ArraySplit(images, np.asarray(ds.targets, dtype=np.int64))
