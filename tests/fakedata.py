"""Tiny datasets written in the real on-disk formats, for everyone's offline end-to-end tests.

* :func:`make_cifar`: the official python-pickle folders ``cifar-10-batches-py/`` or ``cifar-100-python/``.
* :func:`make_image_folder`: an ImageFolder tree of PNGs (CINIC-10 / ImageNet / --dataset imagefolder layout).
* :func:`make_tinyimagenet`: tiny-imagenet-200's layout (val/ labelled by val_annotations.txt).
* :func:`make_idx`: the four raw MNIST/Fashion-MNIST idx files, plain or gzipped.

Each returns the folder to pass as ``--data_folder``. Labels are balanced (``i % n_classes``, shuffled
by ``seed``) unless given; images are seeded random bytes unless given. Checksums of course differ
from the official archives; the loaders read such files anyway.
"""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np


def _labels(n: int, n_classes: int, rng) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _images(n: int, shape, rng) -> np.ndarray:
    return rng.integers(0, 256, size=(n,) + tuple(shape), dtype=np.uint8)


def make_cifar(root, which: str = "cifar100", n_train: int = 200, n_test: int = 100, seed: int = 0, *,
               train_images=None, test_images=None, train_labels=None, test_labels=None) -> str:
    """Write a CIFAR-10/100 python folder under ``root``. Images, if given, are uint8 (N, 32, 32, 3)."""
    if which not in ("cifar10", "cifar100"):
        raise ValueError(which)
    rng = np.random.default_rng(seed)
    n_classes = 10 if which == "cifar10" else 100
    tr_x = _images(n_train, (32, 32, 3), rng) if train_images is None else np.asarray(train_images, np.uint8)
    te_x = _images(n_test, (32, 32, 3), rng) if test_images is None else np.asarray(test_images, np.uint8)
    tr_y = _labels(len(tr_x), n_classes, rng) if train_labels is None else np.asarray(train_labels)
    te_y = _labels(len(te_x), n_classes, rng) if test_labels is None else np.asarray(test_labels)

    def planar(x):  # (N, 32, 32, 3) -> (N, 3072), channel-planar like the official files
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))

    def dump(path, obj):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if which == "cifar10":
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(tr_x)), 5), start=1):
            dump(os.path.join(folder, f"data_batch_{i}"),
                 {b"batch_label": f"training batch {i} of 5".encode(), b"labels": tr_y[part].tolist(),
                  b"data": planar(tr_x[part]), b"filenames": [f"{j}.png".encode() for j in part]})
        dump(os.path.join(folder, "test_batch"),
             {b"batch_label": b"testing batch 1 of 1", b"labels": te_y.tolist(), b"data": planar(te_x),
              b"filenames": [f"{j}.png".encode() for j in range(len(te_x))]})
        dump(os.path.join(folder, "batches.meta"),
             {b"label_names": [f"class{c}".encode() for c in range(10)], b"num_vis": 3072, b"num_cases_per_batch": 10000})
    else:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        for name, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
            dump(os.path.join(folder, name),
                 {b"filenames": [f"{j}.png".encode() for j in range(len(x))], b"batch_label": name.encode(),
                  b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(), b"data": planar(x)})
        dump(os.path.join(folder, "meta"), {b"fine_label_names": [f"class{c}".encode() for c in range(100)],
                                            b"coarse_label_names": [f"super{c}".encode() for c in range(20)]})
    return str(root)


def make_image_folder(root, splits=("train", "test"), n_classes: int = 3, n_per_class: int = 4, size=32,
                      seed: int = 0, mode: str = "RGB", ext: str = "png") -> str:
    """Write ``root/<split>/class<c>/img<k>.<ext>`` random images of ``size``: an int, (H, W), or a list of
    (H, W) that image k of each class cycles through (own data comes in many sizes)."""
    from PIL import Image

    sizes = size if isinstance(size, list) else [(size, size) if isinstance(size, int) else size]
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(n_classes):
            d = os.path.join(root, split, f"class{c:03d}")
            os.makedirs(d, exist_ok=True)
            for k in range(n_per_class):
                h, w = sizes[k % len(sizes)]
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(os.path.join(d, f"img{k}.{ext}"))
    return str(root)


def make_tinyimagenet(root, n_classes: int = 3, n_train: int = 4, n_val: int = 2, size: int = 64, seed: int = 0,
                      val_folders: bool = False) -> str:
    """Write tiny-imagenet-200's layout under ``root/tiny-imagenet-200``: ``wnids.txt``,
    ``train/<wnid>/images/<wnid>_<k>.JPEG`` (+ ``<wnid>_boxes.txt``), ``val/images/val_<i>.JPEG`` labelled by
    ``val/val_annotations.txt`` (or, ``val_folders``, val/ sorted into ``<wnid>/images/``), unlabelled
    ``test/images``. Returns ``root`` (the tinyimagenet reader also finds the sub-folder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = [f"n{1440764 + 17 * c:08d}" for c in range(n_classes)]

    def save(path, image):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)

    for w in wnids:
        boxes = []
        for k in range(n_train):
            save(os.path.join(base, "train", w, "images", f"{w}_{k}.JPEG"), _images(1, (size, size, 3), rng)[0])
            boxes.append(f"{w}_{k}.JPEG\t0\t0\t{size - 1}\t{size - 1}\n")
        with open(os.path.join(base, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.writelines(boxes)
    ann, i = [], 0
    for w in wnids:
        for _ in range(n_val):
            name = f"val_{i}.JPEG"
            sub = os.path.join(w, "images") if val_folders else "images"
            save(os.path.join(base, "val", sub, name), _images(1, (size, size, 3), rng)[0])
            ann.append(f"{name}\t{w}\t0\t0\t{size - 1}\t{size - 1}\n")
            i += 1
    if not val_folders:
        with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
            f.writelines(rng.permutation(ann).tolist())
    save(os.path.join(base, "test", "images", "test_0.JPEG"), _images(1, (size, size, 3), rng)[0])
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    return str(root)


def write_idx(path: str, array: np.ndarray, gz: bool = False) -> str:
    """One uint8 idx file: magic 0x0000 08 <ndim>, big-endian int32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    if gz:
        path += ".gz"
        with gzip.open(path, "wb") as f:
            f.write(header + array.tobytes())
    else:
        with open(path, "wb") as f:
            f.write(header + array.tobytes())
    return path


def make_idx(root, n_train: int = 100, n_test: int = 50, gz: bool = False, seed: int = 0, *,
             train_images=None, test_images=None, train_labels=None, test_labels=None) -> str:
    """Write the four MNIST-format files (28x28 grey, 10 classes) into ``root``."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    tr_x = _images(n_train, (28, 28), rng) if train_images is None else np.asarray(train_images, np.uint8)
    te_x = _images(n_test, (28, 28), rng) if test_images is None else np.asarray(test_images, np.uint8)
    tr_y = _labels(len(tr_x), 10, rng) if train_labels is None else np.asarray(train_labels)
    te_y = _labels(len(te_x), 10, rng) if test_labels is None else np.asarray(test_labels)
    write_idx(os.path.join(root, "train-images-idx3-ubyte"), tr_x, gz)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte"), tr_y, gz)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte"), te_x, gz)
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte"), te_y, gz)
    return str(root)


def planted_similarity(sizes, within: float = 0.95, between: float = 0.1) -> np.ndarray:
    """A layer-similarity matrix with planted contiguous blocks of the given sizes: ``within`` inside a
    block, ``between`` across blocks, 1 on the diagonal (what a teacher with clear layer groups gives)."""
    s = np.full((sum(sizes), sum(sizes)), between)
    for a, b in zip(np.cumsum([0] + list(sizes[:-1])), np.cumsum(sizes)):
        s[a:b, a:b] = within
    np.fill_diagonal(s, 1.0)
    return s
