"""Checkpoints: atomic writes, RepDistiller/DDP-compatible loading, teacher construction.

A checkpoint is a dict with at least ``model`` (state_dict without ``module.``), ``epoch``,
``best_acc``, ``optimizer``, ``distiller`` (the method's state), ``rng`` and ``opt`` (the run's options),
plus ``arch`` (the model_dict name) so a later run never has to guess the architecture.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile

import torch

from helper.errors import ConfigError

SPLIT = "~" if os.name == "nt" else ":"


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def strip_module_prefix(state_dict: dict) -> dict:
    """DataParallel/DDP checkpoints prefix every key with ``module.``; models expect bare keys."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_file(path: str, map_location="cpu"):
    """torch.load with weights_only=True, falling back to a full unpickle for old RepDistiller files
    (``*_last.pth`` pickles an argparse Namespace). One clear line if the file is missing or broken."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist; pass the path of a .pth file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        warnings.warn(f"{path}: not loadable with weights_only=True; loading it as a full pickle "
                      "(only do this for files you trust)")
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"checkpoint {path!r} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "is it a complete PyTorch file?") from None


def state_dict_of(ckpt) -> dict:
    """The model weights inside any of the formats users have: ours and RepDistiller's ({'model': sd}),
    {'state_dict': sd} (seeds/004, many repos), or a bare state_dict."""
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return strip_module_prefix(ckpt[key])
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return strip_module_prefix(ckpt)
    raise ConfigError("checkpoint holds no model weights (expected a 'model' or 'state_dict' entry)")


def arch_from_path(path: str, names) -> str | None:
    """RepDistiller's convention: the teacher's architecture is in its folder name.

    ``.../resnet32x4_vanilla_cifar100_trial_0/x.pth`` -> resnet32x4, ``wrn_40_2_...`` -> wrn_40_2,
    ``S:resnet8x4_T:resnet32x4_...`` (a distilled student) -> resnet8x4. The longest model_dict name
    that the folder name starts with (followed by ``_`` or the end) wins, so underscores are safe.
    """
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    m = re.match(r"S[:~](.+?)_T[:~]", folder)
    if m and m.group(1) in names:
        return m.group(1)
    best = None
    for name in names:
        if folder == name or folder.startswith(name + "_"):
            if best is None or len(name) > len(best):
                best = name
    return best


def build_teacher(path: str, num_classes: int, model_t: str | None = None):
    """Load a teacher: its architecture from the checkpoint, else ``--model_t``, else the folder name.

    Returns ``(model, arch, ckpt)``. Strict loading; a mismatch names the architecture tried and the fix.
    """
    from models import model_dict
    ckpt = load_file(path)
    stored = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if stored and model_t and stored != model_t:
        raise ConfigError(f"--model_t {model_t} contradicts the checkpoint, which stores arch {stored!r}; "
                          "drop --model_t")
    arch = stored or model_t or arch_from_path(path, model_dict)
    if arch is None:
        raise ConfigError(f"cannot tell the teacher's architecture from {path!r}: the checkpoint stores none and "
                          "the folder name starts with no model_dict name; pass --model_t <name>")
    if arch not in model_dict:
        raise ConfigError(f"teacher architecture {arch!r} is not in model_dict; pass --model_t <name>")
    model = model_dict[arch](num_classes=num_classes)
    sd = state_dict_of(ckpt)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:3]
        raise ConfigError(f"{path!r} does not fit {arch} with {num_classes} classes ({'; '.join(first)}); "
                          "check --dataset and --model_t") from None
    return model, arch, ckpt


def options_dict(opt) -> dict:
    """The run's options as plain types, so checkpoints load with weights_only=True."""
    out = {}
    for k, v in vars(opt).items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = list(v)
    return out
