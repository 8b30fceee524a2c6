"""Does matching the CKA flow happen, and does kd alone already do it? The student x teacher group CKA of
several students over training, measured alike on every one of them.

    python scripts/cka_curves.py --path_t <teacher.pth> --grouping <cka_group run>/cka_grouping.json \
        --run kd=<kd run folder> --run cka_group=<cka_group run folder> [--images 1000] [--out curves.json]

Each ``--run LABEL=FOLDER`` is a student run saved with ``--save_freq 1`` (one ``ckpt_epoch_<e>.pth`` per
epoch); epoch 0 is its initialisation, rebuilt from its --seed exactly as the run built it (its own random
stream, helper.util.RNGStream). Every checkpoint is measured with helper.cka_diagnostics.group_cka: the
unbiased minibatch CKA between the student's and the teacher's block layers (pooled as the grouping's run
pooled) on ``--images`` un-augmented training images of the run's data stream, then each group's CKA (the
mean over its student x teacher block) under the *one* grouping given, so a kd student (which never saw a
grouping) and a cka_group student are compared on the same groups. Prints a table per run and writes JSON.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dataset  # noqa: E402
from helper.checkpoint import build_teacher, load_file  # noqa: E402
from helper.cka_diagnostics import group_cka, load_grouping  # noqa: E402
from helper.errors import ConfigError  # noqa: E402
from helper.util import RNGStream  # noqa: E402
from models import model_dict  # noqa: E402


def checkpoints(folder: str) -> list:
    """(epoch, path) of a run's per-epoch checkpoints, in order."""
    found = []
    for path in glob.glob(os.path.join(folder, "ckpt_epoch_*.pth")):
        m = re.search(r"ckpt_epoch_(\d+)\.pth$", path)
        if m:
            found.append((int(m.group(1)), path))
    if not found:
        raise ConfigError(f"{folder}: no ckpt_epoch_<e>.pth (train it with --save_freq 1)")
    return sorted(found)


def plain_images(params: dict, shape, n: int):
    """The run's first ``n`` un-augmented training images (its data seed, subset and input shape)."""
    opt = argparse.Namespace(**{k: params[k] for k in ("dataset", "data_folder", "train_subset", "seed", "data_seed")},
                             batch_size=params.get("batch_size", 64), num_workers=0, loader="tensor",
                             no_augment=True, drop_last=False, download=False)
    data = dataset.get_dataloaders(opt, shape)
    return [x for x in data.plain_train_images(n)]


def curve(model_t, folder: str, grouping: dict, images) -> list:
    params = json.load(open(os.path.join(folder, "parameters.json")))
    arch, seed = params["model_s"], params["seed"]
    n_cls = model_t.get_classifier().out_features
    with RNGStream(seed):
        student = model_dict[arch](num_classes=n_cls)  # the run's initialisation (epoch 0)
    rows = []
    for epoch, path in [(0, None)] + checkpoints(folder):
        if path is not None:
            student.load_state_dict(load_file(path)["model"])
        out = group_cka(model_t, student, grouping, images)
        rows.append({"epoch": epoch, "group_cka": out["group_cka"], "mean": out["mean"]})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path_t", required=True)
    p.add_argument("--grouping", required=True, help="a cka_group run's cka_grouping.json (the groups measured)")
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    grouping = load_grouping(a.grouping)
    runs = []
    for item in a.run:
        if "=" not in item:
            raise ConfigError(f"--run {item!r}: write LABEL=FOLDER")
        runs.append(item.split("=", 1))
    params = json.load(open(os.path.join(runs[0][1], "parameters.json")))
    model_t, _, _ = build_teacher(a.path_t, dataset.num_classes(params["dataset"]))
    model_t.eval()
    images = plain_images(params, tuple(model_t.input_shape), a.images)
    result = {"grouping": a.grouping, "images": a.images, "curves": {}}
    for label, folder in runs:
        with torch.no_grad():
            rows = curve(model_t, folder, grouping, images)
        result["curves"][label] = rows
        print(f"{label}: " + "; ".join(f"e{r['epoch']} " + "/".join(f"{v:.3f}" for v in r["group_cka"]) for r in rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
