"""Install the public CIFAR-100 teachers from ``cifar_teachers.tar`` (scripts/fetch_pretrained_teachers.sh).

The archive (RepDistiller's teachers, mirrored in mdistiller's GitHub release) holds
``cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth``. Each teacher whose ``<model>`` is in model_dict goes to
``<save_dir>/teachers/models/<model>_vanilla_cifar100_trial_0/`` as ``<model>_last.pth`` (what
run_cifar_distill.sh's default TEACHER_PATH names) and ``ckpt_epoch_240.pth`` (a hard link, else a copy),
byte for byte the published file.

Safety: the archive is read, never extracted by its own paths: any member with an absolute path, a ``..``
component, or that is a link or device refuses the whole archive (one line, nothing written). Every file
must load with the safe loader (weights only) and fit its architecture with 100 classes before anything is
installed. A folder that already holds another ``<model>_last.pth`` (your own run) is left alone.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from helper.checkpoint import build_teacher  # noqa: E402
from helper.errors import ConfigError  # noqa: E402

MEMBER = re.compile(r"(?:^|/)([A-Za-z0-9_]+)_vanilla/ckpt_epoch_240\.pth$")
DATASET, CLASSES, EPOCH = "cifar100", 100, 240


def download(url: str, dest: str) -> None:
    """``url`` -> ``dest`` through a temporary file (an interrupted download leaves nothing)."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    print(f"downloading {url} -> {dest}")
    try:
        torch.hub.download_url_to_file(url, dest, progress=sys.stderr.isatty())
    except Exception as e:  # network, proxy, disk
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"downloading {url} failed ({type(e).__name__}: {why}); fetch the file by other means and "
                          f"run TEACHERS_TAR=/path/to/cifar_teachers.tar bash scripts/fetch_pretrained_teachers.sh"
                          ) from None


def teacher_members(tar_path: str) -> dict:
    """{model name: tar member} of the archive's teachers, after checking every member is harmless."""
    from models import model_dict

    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError, EOFError) as e:
        why = (str(e).strip().splitlines() or [""])[0].rstrip(":")
        raise ConfigError(f"{tar_path} is not a readable tar archive ({type(e).__name__}: {why}); "
                          "download cifar_teachers.tar again") from None
    found, other = {}, []
    for m in members:
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", m.name) or ".." in parts:
            raise ConfigError(f"{tar_path}: member {m.name!r} points outside the archive's folder; refused "
                              "(this is not the published archive), nothing was written")
        if not (m.isfile() or m.isdir()):
            raise ConfigError(f"{tar_path}: member {m.name!r} is a link or special file; refused "
                              "(this is not the published archive), nothing was written")
        match = MEMBER.search(m.name) if m.isfile() else None
        if match and match.group(1) in model_dict:
            found[match.group(1)] = m
        elif match:
            other.append(match.group(1))
    if other:
        print(f"# not in model_dict, skipped: {', '.join(sorted(other))}")
    if not found:
        raise ConfigError(f"{tar_path} holds no <model>_vanilla/ckpt_epoch_{EPOCH}.pth teacher of model_dict; "
                          "is it cifar_teachers.tar?")
    return found


def install(tar_path: str, save_dir: str) -> list:
    """Check every teacher of the archive, then install them; returns the installed ``<model>_last.pth``."""
    members = teacher_members(tar_path)
    models_dir = os.path.join(save_dir, "teachers", "models")
    os.makedirs(models_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch_teachers_", dir=models_dir)
    installed = []
    try:
        with tarfile.open(tar_path) as tar:
            for model, member in sorted(members.items()):
                staged = os.path.join(staging, f"{model}_vanilla", f"ckpt_epoch_{EPOCH}.pth")
                os.makedirs(os.path.dirname(staged))
                with tar.extractfile(member) as src, open(staged, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                try:  # the safe loader, strictly into model_dict[model] with 100 classes
                    build_teacher(staged, CLASSES, model)
                except ConfigError as e:
                    raise ConfigError(f"{member.name} in {tar_path}: {e}") from None
        for model in sorted(members):
            staged = os.path.join(staging, f"{model}_vanilla", f"ckpt_epoch_{EPOCH}.pth")
            folder = os.path.join(models_dir, f"{model}_vanilla_{DATASET}_trial_0")
            last, epoch_file = (os.path.join(folder, n) for n in (f"{model}_last.pth", f"ckpt_epoch_{EPOCH}.pth"))
            mine = [f for f in (last, epoch_file) if os.path.exists(f) and not filecmp.cmp(f, staged, shallow=False)]
            if mine:
                print(f"# kept {folder} as it is: {os.path.basename(mine[0])} there is not the published file (your "
                      "own run?); move the folder away to install the published teacher")
                continue
            os.makedirs(folder, exist_ok=True)
            os.replace(staged, last)
            if not os.path.exists(epoch_file):
                try:
                    os.link(last, epoch_file)
                except OSError:
                    shutil.copyfile(last, epoch_file)
            installed.append(last)
            print(f"installed {last}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return installed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tar", help="cifar_teachers.tar on disk (no network)")
    src.add_argument("--url", help="where to download cifar_teachers.tar from")
    p.add_argument("--save_dir", default="./save")
    a = p.parse_args(argv)
    try:
        tar_path = a.tar
        if tar_path is None:
            tar_path = os.path.join(a.save_dir, "teachers", os.path.basename(a.url.split("?")[0]) or "teachers.tar")
            if not os.path.isfile(tar_path):
                download(a.url, tar_path)
            else:
                print(f"# using {tar_path}, downloaded before (delete it to download again)")
        elif not os.path.isfile(tar_path):
            raise ConfigError(f"TEACHERS_TAR={tar_path}: no such file")
        done = install(tar_path, a.save_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(done)} teacher(s) ready; e.g. bash scripts/run_cifar_distill.sh (SAVE={a.save_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
