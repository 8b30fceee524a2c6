"""MNIST and Fashion-MNIST from the standard raw idx files (plain or .gz).

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzipped. They are looked for in ``--data_folder``, then in
the sub-folders torchvision's download writes (``MNIST/raw``, ``FashionMNIST/raw``) and the usual
names, then (Fashion-MNIST only) in ``/usr/share/datasets/fashion-mnist`` from the Debian/Ubuntu
package ``dataset-fashion-mnist``. ``--download`` uses torchvision only when none of them has the
files.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from helper.errors import ConfigError

from .base import ArraySplit

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

_SUBDIRS = {
    "mnist": ("MNIST/raw", "mnist", "MNIST"),
    "fashionmnist": ("FashionMNIST/raw", "fashion-mnist", "fashionmnist", "FashionMNIST"),
}


def _find(folder: str, base: str) -> str | None:
    for name in (base, base + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    """Parse one idx file (uint8 payload): magic 0x0000 08 <ndim>, big-endian int32 dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise ConfigError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ConfigError(f"{path}: header says {dims} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()  # writable, owns its memory


def candidate_folders(name: str, data_folder: str) -> list[str]:
    folders = [data_folder] + [os.path.join(data_folder, s) for s in _SUBDIRS[name]]
    if name == "fashionmnist":
        folders.append(FASHION_SYSTEM_DIR)
    return folders


def find_folder(name: str, data_folder: str) -> str | None:
    for folder in candidate_folders(name, data_folder):
        if all(_find(folder, f) for f in FILES):
            return folder
    return None


def load_idx_dataset(name: str, data_folder: str, download: bool = False):
    folder = find_folder(name, data_folder)
    if folder is None and download:
        _download(name, data_folder)
        folder = find_folder(name, data_folder)
    if folder is None:
        how = ("install the Debian/Ubuntu package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
               "pass --download, or put the files there" if name == "fashionmnist"
               else "pass --download, or put the files there")
        looked = data_folder + (f" and {FASHION_SYSTEM_DIR}" if name == "fashionmnist" else "")
        raise ConfigError(f"{name} not found: looked in {looked} (and its {'/'.join(_SUBDIRS[name][:1])} "
                          f"sub-folder) for {', '.join(FILES)} (plain or .gz); {how}")
    splits = []
    for img_name, lab_name in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
        images = read_idx(_find(folder, img_name))
        labels = read_idx(_find(folder, lab_name)).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"{folder}: {img_name} must hold N x H x W images and {lab_name} N labels, "
                              f"got {images.shape} and {labels.shape}")
        if images.shape[1:] != (28, 28):
            raise ConfigError(f"{folder}: {img_name} holds {images.shape[1]}x{images.shape[2]} images, not 28x28")
        if len(labels) and labels.max() > 9:
            raise ConfigError(f"{folder}: {lab_name} has labels above 9")
        splits.append(ArraySplit(np.ascontiguousarray(images[..., None]), labels))
    return splits[0], splits[1]


def _download(name: str, data_folder: str) -> None:
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    try:
        os.makedirs(data_folder, exist_ok=True)
        cls(root=data_folder, train=True, download=True)
        cls(root=data_folder, train=False, download=True)
    except Exception as e:
        raise ConfigError(f"--download of {name} into {data_folder} failed: {type(e).__name__}: {e}") from None
