"""CIFAR-10 and CIFAR-100 from the official python-pickle folders.

``--data_folder`` holds ``cifar-10-batches-py/`` (data_batch_1..5, test_batch) or
``cifar-100-python/`` (train, test). Each pickle has ``b'data'`` (uint8, N x 3072, channel-planar
RGB) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). Checksums are not verified:
any file of the right format loads (tests write tiny ones). The files are pickles, read by an unpickler
that builds only dicts, lists, strings, numbers and numpy arrays: a file naming anything else is refused. ``--download`` fetches the archive with
torchvision only when the folder is missing.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from helper.errors import ConfigError

from .base import ArraySplit

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python file holds (dicts, lists, bytes, str, numbers, numpy arrays) and
    nothing else: a pickle naming any other global (a function to call) is refused before it runs.
    ``_codecs.encode`` is how Python 3's protocol 2 writes bytes (an array's buffer); it only re-encodes a
    string with a codec of the standard library's ``encodings`` package."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR data file never holds "
                                     "(refused: nothing in it was run)")


def _read_pickles(folder: str, names, label_key: bytes) -> ArraySplit:
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                entry = _ArrayUnpickler(f, encoding="bytes").load()
            data = np.asarray(entry[b"data"], dtype=np.uint8)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError) as e:
            raise ConfigError(f"{path} is not a CIFAR python pickle with b'data' and {label_key!r} "
                              f"({type(e).__name__}: {e}); re-extract the official archive") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise ConfigError(f"{path}: expected b'data' of shape (N, 3072) and N labels, got "
                              f"{data.shape} and {len(lab)}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return ArraySplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def cifar_folder(name: str, data_folder: str) -> str | None:
    sub, train, test, _ = _LAYOUT[name]
    for folder in (os.path.join(data_folder, sub), data_folder):
        if all(os.path.isfile(os.path.join(folder, n)) for n in train + test):
            return folder
    return None


def load_cifar(name: str, data_folder: str, download: bool = False):
    sub, train, test, key = _LAYOUT[name]
    folder = cifar_folder(name, data_folder)
    if folder is None and download:
        _download(name, data_folder)
        folder = cifar_folder(name, data_folder)
    if folder is None:
        url = "https://www.cs.toronto.edu/~kriz/" + ("cifar-10-python.tar.gz" if name == "cifar10"
                                                      else "cifar-100-python.tar.gz")
        raise ConfigError(
            f"{name} not found: looked in {os.path.join(data_folder, sub)} for {', '.join(train + test)}; "
            f"pass --download, or extract {url} into --data_folder {data_folder}")
    n_classes = 10 if name == "cifar10" else 100
    out = _read_pickles(folder, train, key), _read_pickles(folder, test, key)
    for split in out:
        if len(split) and (split.targets.min() < 0 or split.targets.max() >= n_classes):
            raise ConfigError(f"{folder}: labels outside 0..{n_classes - 1}")
    return out


def _download(name: str, data_folder: str) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        os.makedirs(data_folder, exist_ok=True)
        cls(root=data_folder, train=True, download=True)
    except Exception as e:  # network, disk: one line for the user
        raise ConfigError(f"--download of {name} into {data_folder} failed: {type(e).__name__}: {e}") from None
