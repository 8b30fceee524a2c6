"""Published teachers: torchvision's ImageNet weights as ``--path_t torchvision:<name>``, and the check of
a teacher's measured accuracy against the published one.

``torchvision:resnet34`` (also resnet18, resnet50; ``torchvision:resnet50.IMAGENET1K_V2`` picks other
weights, default IMAGENET1K_V1, the weights of the KD papers' ImageNet tables) is looked up with
torchvision's weights API: the file is torchvision's own cache, ``torch.hub.get_dir()/checkpoints/<name of
the URL>`` (``$TORCH_HOME/hub/checkpoints``), downloaded there only when missing (checked against the hash
prefix in its name), and read by the safe loader like any other checkpoint, into ``ResNet{18,34,50}_imagenet``
(torchvision's state_dict keys).
"""
from __future__ import annotations

import functools
import os
import sys
from urllib.parse import urlparse

from helper.errors import ConfigError

TORCHVISION_TEACHERS = {"resnet18": "ResNet18_imagenet", "resnet34": "ResNet34_imagenet",
                        "resnet50": "ResNet50_imagenet"}
DEFAULT_WEIGHTS = "IMAGENET1K_V1"
TOLERANCE = 1.0  # points of top-1 between a teacher and its published accuracy before a warning


def torchvision_weights(spec: str):
    """``resnet34`` or ``resnet50.IMAGENET1K_V2`` -> (torchvision WeightsEnum member, model_dict name)."""
    name, _, tag = spec.partition(".")
    if name not in TORCHVISION_TEACHERS:
        raise ConfigError(f"--path_t torchvision:{spec}: torchvision teachers are "
                          f"{', '.join('torchvision:' + n for n in TORCHVISION_TEACHERS)} (the ImageNet models of "
                          "model_dict with a torchvision counterpart)")
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    try:
        return enum[tag or DEFAULT_WEIGHTS], TORCHVISION_TEACHERS[name]
    except KeyError:
        raise ConfigError(f"--path_t torchvision:{spec}: torchvision has no weights {tag!r} for {name}; "
                          f"choose one of {', '.join(w.name for w in enum)}") from None


def torchvision_teacher_file(spec: str, model_t: str | None = None) -> tuple[str, str]:
    """The local file of torchvision's weights ``spec`` (downloaded into torchvision's cache if missing)
    and the model_dict architecture it loads into."""
    import torch

    weights, arch = torchvision_weights(spec)
    if model_t and model_t != arch:
        raise ConfigError(f"--model_t {model_t} contradicts --path_t torchvision:{spec}, which is a {arch}; "
                          "drop --model_t")
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    filename = os.path.basename(urlparse(weights.url).path)
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        stem = os.path.splitext(filename)[0]
        hash_prefix = stem.rsplit("-", 1)[1] if "-" in stem else None
        try:
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, path, hash_prefix=hash_prefix, progress=False)
        except Exception as e:  # no network, proxy, disk, hash mismatch: one line with the manual fix
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"--path_t torchvision:{spec}: {path} is not there and downloading it failed "
                              f"({type(e).__name__}: {why}); download {weights.url} and put it at {path} "
                              "(torchvision's cache: $TORCH_HOME/hub/checkpoints)") from None
    return path, arch


@functools.lru_cache(maxsize=1)
def _published_tables():
    """scripts/published.py, the typed tables, loaded by its path (scripts/ is a folder, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "published.py")
    spec = importlib.util.spec_from_file_location("kd_published_tables", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before running it: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def published_accuracy(path_t: str | None, arch: str, dataset_name: str):
    """(published top-1, where it comes from) of this teacher, or None when nothing is published for it:
    RepDistiller's Teacher row on cifar100; torchvision's metadata on imagenet (the weights named by a
    ``torchvision:`` path, else IMAGENET1K_V1, whose recipe scripts/run_imagenet_distill.sh trains with)."""
    if dataset_name == "cifar100":
        acc = _published_tables().teacher_accuracy(arch)
        return None if acc is None else (acc, "RepDistiller's table")
    if dataset_name == "imagenet":
        from helper.checkpoint import TORCHVISION_PREFIX

        if path_t and path_t.startswith(TORCHVISION_PREFIX):
            spec = path_t[len(TORCHVISION_PREFIX):]
        else:
            spec = next((n for n, a in TORCHVISION_TEACHERS.items() if a == arch), None)
            if spec is None:
                return None
        weights, _ = torchvision_weights(spec)
        return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], f"torchvision {weights}"
    return None


def check_published_accuracy(path_t: str | None, arch: str, dataset_name: str, acc: float | None, log=print):
    """Warn (one line through ``log``) when the teacher's measured top-1 ``acc`` is more than
    ``TOLERANCE`` points from its published accuracy: a wrong file, a damaged download, another dataset
    split or preprocessing. Returns the published accuracy (None: nothing to compare)."""
    published = published_accuracy(path_t, arch, dataset_name) if acc is not None else None
    if published is None:
        return None
    value, source = published
    if abs(acc - value) > TOLERANCE:
        log(f"warning: teacher {path_t} ({arch}) scores {acc:.2f} top-1 on {dataset_name}, {acc - value:+.2f} "
            f"points from the published {value:.2f} ({source}); check that it is the file and the data you meant")
    return value
