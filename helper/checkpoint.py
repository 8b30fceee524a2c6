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


# Types that RepDistiller's and mdistiller's own files hold besides tensors and plain containers (which
# weights_only loads anyway): RepDistiller's ``*_last.pth`` pickles its argparse options (``opt``); both
# repos' ``adjust_learning_rate`` computes ``lr * rate ** np.sum(...)``, so their optimizer states (in
# ``ckpt_epoch_240.pth`` too) hold the learning rate as a numpy float64 scalar, which pickles as
# ``multiarray.scalar(dtype, bytes)`` plus a BUILD of the float64 dtype. numpy 1.x files name the
# function ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``. None of these runs code.
def _allowed_globals() -> list:
    import argparse

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return [argparse.Namespace, np.dtype, type(np.dtype(np.float64)),
            (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


TRUST_FLAG = "--trust_checkpoint"
TORCHVISION_PREFIX = "torchvision:"


def load_file(path: str, map_location="cpu", trust: bool = False):
    """torch.load with ``weights_only=True`` and the short allow-list above: loading never runs code.

    A file that needs anything else is refused with one line naming the type and ``--trust_checkpoint``;
    with ``trust=True`` (that flag: the user vouches for the file) it is fully unpickled, with a warning.
    A missing, corrupt or truncated file is one line too.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist; pass the path of a .pth file")
    try:
        if trust:
            warnings.warn(f"{path}: {TRUST_FLAG}: unpickling the whole file (weights_only=False); it can run "
                          "any code it holds", stacklevel=2)
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)|got <class '([^']+)'>", str(e))
        if refused and not trust:
            raise ConfigError(f"checkpoint {path!r} holds {refused.group(1) or refused.group(2)}, which a safe "
                              "(weights-only) load does not allow; nothing in it was run. If you trust the file, "
                              f"pass {TRUST_FLAG} to load it fully") from None
        hint = "" if trust else (f"; if it is a torch.save file you trust (saved with an unusual pickle protocol), "
                                 f"{TRUST_FLAG} loads it fully")
        raise ConfigError(_unreadable(path, e, hint)) from None
    except Exception as e:  # zip, EOF, storage and pickle-opcode errors of corrupt or truncated files
        raise ConfigError(_unreadable(path, e)) from None


def _unreadable(path: str, e: Exception, hint: str = "") -> str:
    msg = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in msg if "Unsupported operand" in ln), msg[0] if msg else "")
    return (f"checkpoint {path!r} cannot be read ({type(e).__name__}: {detail[:160]}); it is corrupt, truncated or "
            f"not a PyTorch file: download or copy it again{hint}")


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


def build_teacher(path: str, num_classes: int, model_t: str | None = None, trust: bool = False):
    """Load a teacher: its architecture from the checkpoint, else ``--model_t``, else the folder name.
    ``torchvision:<name>`` is torchvision's published ImageNet weights (:mod:`helper.pretrained`).

    Returns ``(model, arch, ckpt)``. Strict loading; a mismatch names the architecture tried and the fix.
    """
    from models import model_dict
    if path.startswith(TORCHVISION_PREFIX):
        from helper.pretrained import torchvision_teacher_file
        path, model_t = torchvision_teacher_file(path[len(TORCHVISION_PREFIX):], model_t)
    ckpt = load_file(path, trust=trust)
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
