"""Own image trees: ``--dataset imagefolder`` (any ``train/<class>/*`` + ``val/<class>/*`` tree, or ``test/``)
and ``--dataset tinyimagenet`` (tiny-imagenet-200 as downloaded: ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; a val/ already sorted into class folders
works too).

Classes are the training split's class folders, sorted (torchvision ImageFolder's order); images are the
files with an image extension under each class folder, at any depth. Before anything is served every
image's header is read (a file that is no image is one line naming it), an empty class folder is one line
naming it, and train/val class sets that differ are one line naming the difference.

Served size: ``--image_size N`` (NxN), else 64x64 for tinyimagenet and the model's input size for
imagefolder; every image is resized to it (bilinear) when read. Normalisation: ``--mean``/``--std``, else
mdistiller's statistics for tinyimagenet, else measured on a seeded sample of ``STATS_SAMPLE`` training
images at the served size and cached (with the fact that the headers were checked) in
``$XDG_CACHE_HOME/kd-codebase`` (``~/.cache/kd-codebase``), keyed by the folder, the size and every file's
path, size and modification time. Nothing is ever written into the data folder, which may be read-only.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from helper.errors import ConfigError

from .base import DatasetSpec

OWN_DATASETS = ("imagefolder", "tinyimagenet")
TINY_SIZE = 64
TINY_STATS = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))  # mdistiller's tiny_imagenet.py
STATS_SAMPLE = 2000
STATS_SEED = 0


class FileList:
    """One split: ``samples`` [(path, class index)], ``targets``, ``paths``, and ``loader`` (path -> PIL RGB
    image at the served size), the attributes the folder loaders read of a torchvision ImageFolder."""

    def __init__(self, samples, size):
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.loader = ResizedRGB(size)

    def __len__(self) -> int:
        return len(self.samples)


class ResizedRGB:
    """path -> RGB PIL image resized (bilinear) to ``size`` = (H, W); picklable for DataLoader workers."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, path: str):
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
        if im.size != (self.size[1], self.size[0]):
            im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
        return im


def _is_image(name: str) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return name.lower().endswith(IMG_EXTENSIONS)


def _images_under(folder: str) -> list:
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    return out


def _class_folders(split_dir: str) -> dict:
    """{class name: sorted image paths} of ``split_dir/<class>/...``; an empty class folder is an error."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise ConfigError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image files>")
    out = {}
    for c in classes:
        images = _images_under(os.path.join(split_dir, c))
        if not images:
            raise ConfigError(f"{os.path.join(split_dir, c)}: empty class folder (no image files); add its images "
                              "or remove the folder")
        out[c] = images
    return out


def _same_classes(train: list, val: list, val_dir: str) -> None:
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if missing or extra:
        what = "; ".join(x for x in (missing and f"only in train/: {', '.join(missing[:5])}"
                                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                                     extra and f"only in {os.path.basename(val_dir)}/: {', '.join(extra[:5])}"
                                     + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")) if x)
        raise ConfigError(f"the class sets of train/ and {val_dir} differ ({what}); both splits need the same "
                          "class folders")


def _tiny_root(data_folder: str) -> str:
    for root in (data_folder, os.path.join(data_folder, "tiny-imagenet-200")):
        if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
            return root
    raise ConfigError(f"tinyimagenet not found: looked in {data_folder} (and its tiny-imagenet-200 sub-folder) for "
                      "train/ and val/; unzip tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
                      "into --data_folder")


def _tiny_val(val_dir: str) -> dict:
    """{wnid: image paths} of tiny-imagenet's val/: val_annotations.txt's labels, or class folders."""
    ann = os.path.join(val_dir, "val_annotations.txt")
    if not os.path.isfile(ann):
        return _class_folders(val_dir)
    out: dict = {}
    with open(ann) as f:
        for n, line in enumerate(f, 1):
            cols = line.split("\t")
            if not line.strip():
                continue
            if len(cols) < 2:
                raise ConfigError(f"{ann} line {n}: expected '<file>\\t<wnid>\\t...', got {line.strip()!r}")
            path = os.path.join(val_dir, "images", cols[0].strip())
            if not os.path.isfile(path):
                raise ConfigError(f"{ann} line {n} names {path}, which does not exist")
            out.setdefault(cols[1].strip(), []).append(path)
    if not out:
        raise ConfigError(f"{ann} labels no image")
    return {k: sorted(v) for k, v in sorted(out.items())}


def scan(opt) -> tuple[list, list, list, str]:
    """(classes, train samples, val samples, root) of an own folder dataset; files are listed, not opened."""
    name, folder = opt.dataset, getattr(opt, "data_folder", None) or "./data"
    if name == "tinyimagenet":
        root = _tiny_root(folder)
        train, val_dir = _class_folders(os.path.join(root, "train")), os.path.join(root, "val")
        val = _tiny_val(val_dir)
    else:
        root = folder
        val_dir = next((os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)
        if not os.path.isdir(os.path.join(root, "train")) or val_dir is None:
            raise ConfigError(f"--dataset imagefolder: {root} must hold train/<class>/<images> and "
                              "val/<class>/<images> (or test/)")
        train, val = _class_folders(os.path.join(root, "train")), _class_folders(val_dir)
    _same_classes(list(train), list(val), val_dir)
    classes = list(train)
    index = {c: i for i, c in enumerate(classes)}
    return (classes, [(p, index[c]) for c in classes for p in train[c]],
            [(p, index[c]) for c in classes for p in val[c]], os.path.abspath(root))


def served_size(opt, input_shape=None) -> tuple[int, int]:
    """(H, W) the images are served at: --image_size, else 64 (tinyimagenet) or the model's (imagefolder)."""
    size = getattr(opt, "image_size", None)
    if size:
        if int(size) < 8:
            raise ConfigError(f"--image_size {size}: give the side of the served images in pixels (e.g. 32, 64, 224)")
        return int(size), int(size)
    if opt.dataset == "tinyimagenet":
        return TINY_SIZE, TINY_SIZE
    if input_shape is None:
        raise ConfigError("--dataset imagefolder needs --image_size (or a model whose input size it takes)")
    return int(input_shape[1]), int(input_shape[2])


def _parse_stats(opt):
    vals = []
    for flag in ("mean", "std"):
        raw = getattr(opt, flag, None)
        if raw is None:
            vals.append(None)
            continue
        try:
            v = tuple(float(x) for x in str(raw).split(","))
        except ValueError:
            v = ()
        if len(v) != 3 or (flag == "std" and min(v) <= 0):
            raise ConfigError(f"--{flag} {raw!r}: give three comma-separated numbers (RGB, in [0, 1])"
                              + (", all positive" if flag == "std" else ""))
        vals.append(v)
    if (vals[0] is None) != (vals[1] is None):
        raise ConfigError("--mean and --std go together: give both (or neither, to measure them)")
    return None if vals[0] is None else (vals[0], vals[1])


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kd-codebase")


def _fingerprint(root: str, size, samples) -> str:
    h = hashlib.sha256(f"{root}\n{size}\n".encode())
    for path, target in samples:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}\t{target}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def check_images(samples) -> None:
    """Read every image's header: a file that is not an image is one line naming it."""
    from PIL import Image

    for path, _ in samples:
        try:
            with Image.open(path) as im:
                w, h = im.size
            if w < 1 or h < 1:
                raise ValueError(f"size {w}x{h}")
        except Exception as e:  # OSError (UnidentifiedImageError), ValueError, SyntaxError, DecompressionBomb
            raise ConfigError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]}); replace or "
                              "remove it") from None


def measure_stats(samples, size) -> tuple[tuple, tuple]:
    """Per-channel mean and std (of pixel values in [0, 1]) of a seeded sample of training images served at
    ``size``: the same images for every run and rank."""
    rng = np.random.default_rng(STATS_SEED)
    pick = rng.choice(len(samples), size=min(STATS_SAMPLE, len(samples)), replace=False)
    load = ResizedRGB(size)
    s1, s2, n = np.zeros(3), np.zeros(3), 0
    for i in np.sort(pick):
        path = samples[i][0]
        try:
            a = np.asarray(load(path), dtype=np.float64).reshape(-1, 3) / 255.0
        except Exception as e:
            raise ConfigError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]}); replace or "
                              "remove it") from None
        s1, s2, n = s1 + a.sum(0), s2 + (a * a).sum(0), n + len(a)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    if min(std) <= 0:
        raise ConfigError("the training images are constant in a channel (std 0); give --mean and --std")
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _write_json(path: str, obj) -> None:
    """Atomically; a cache that cannot be written (read-only home) is skipped."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except OSError:
        pass


def build_spec(opt, input_shape=None, rank: int = 0) -> DatasetSpec:
    """The DatasetSpec of an own folder dataset: its classes, served shape, statistics and both splits,
    after every check of the module docstring (each failure one line, nothing written)."""
    classes, train, val, root = scan(opt)
    size = served_size(opt, input_shape)
    stats = _parse_stats(opt) or (TINY_STATS if opt.dataset == "tinyimagenet" else None)
    key = _fingerprint(root, size, train + val)
    cache = os.path.join(cache_dir(), "folders", f"{key}.json")
    cached = None
    if os.path.isfile(cache):
        try:
            with open(cache) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = None
    if not (cached and cached.get("checked")):
        check_images(train + val)
    measured = (tuple(cached["mean"]), tuple(cached["std"])) if cached and "mean" in cached else None
    if stats is None:
        stats = measured = measured or measure_stats(train, size)
    entry = {"folder": root, "dataset": opt.dataset, "size": list(size), "n_train": len(train), "n_val": len(val),
             "checked": True}
    if measured:  # only measured statistics: flags are this run's choice
        entry.update(mean=list(measured[0]), std=list(measured[1]))
    if rank == 0 and entry != cached:
        _write_json(cache, entry)
    aug = dict(rotate=20.0, flip=True) if opt.dataset == "tinyimagenet" else \
        dict(crop_pad=max(1, round(size[0] / 8)), flip=True)
    train_list, val_list = FileList(train, size), FileList(val, size)
    return DatasetSpec(opt.dataset, len(classes), (3,) + size, stats[0], stats[1], "folder",
                       lambda data_folder: (train_list, val_list), load_resize=True,
                       memory_bytes=(len(train) + len(val)) * 3 * size[0] * size[1], **aug)
