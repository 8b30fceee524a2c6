"""The README's main job: on Fashion-MNIST, train a small teacher, then students with no
distillation (baseline), KD and cka_group, and print their test accuracies.

    python scripts/main_job.py                 # the default: a few minutes on 2 CPU cores (README)
    python scripts/main_job.py --train_subset 0 --epochs_t 30 --epochs_s 30 --device cuda   # full data

The teacher goes through train_teacher.py, the three students through train_group.py as one group (one
teacher forward per batch, the same batches for all, each the run train_student.py would make alone), so
what this prints is what those scripts produce; run folders land under --save_dir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fashion_experiments as fe  # noqa: E402  (the same run flags and schedule)
import train_group  # noqa: E402
import train_student  # noqa: E402
import train_teacher  # noqa: E402
from helper.checkpoint import SPLIT  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--train_subset", type=int, default=8000, help="training images (0: all 60,000)")
    p.add_argument("--epochs_t", type=int, default=6)
    p.add_argument("--epochs_s", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--cka_beta", type=float, default=1.0, help="-b of cka_group")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--save_dir", default="./save/main_job")
    p.add_argument("--device", default="auto")
    p.add_argument("--trial", default="0")
    return p.parse_args()


def common(a, epochs) -> list:
    return fe.common(a, epochs, a.train_subset)


def summary(folder: str) -> dict:
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)


def main():
    a = parse()
    t0 = time.time()
    rows = []
    teacher_dir = os.path.join(a.save_dir, "teachers", "models",
                               f"{a.teacher}_vanilla_fashionmnist_trial_{a.trial}")
    print(f"==> [1/2] teacher {a.teacher}: {a.epochs_t} epochs", flush=True)
    fe.call(train_teacher.main, ["--model", a.teacher, "--trial", a.trial] + common(a, a.epochs_t))
    rows.append(("teacher", a.teacher, summary(teacher_dir)))

    # the three students as one group (train_group.py): one teacher forward per batch for all of them, the
    # same batches for each (paired), each bitwise the run train_student.py would make on its own
    path_t = os.path.join(teacher_dir, f"{a.teacher}_best.pth")
    students = [("baseline (CE)", "kd", ["-c", "1", "-d", "0", "-b", "0"]),
                ("kd", "kd", ["-c", "0.1", "-d", "0.9", "-b", "0"]),
                ("cka_group", "cka_group", ["-c", "1", "-d", "1", "-b", str(a.cka_beta)])]
    print(f"==> [2/2] students of {a.teacher}, as one group: " + ", ".join(label for label, _, _ in students), flush=True)
    shared = ["--path_t", path_t, "--model_s", a.student, "--trial", a.trial, "--skip-validation"] + common(a, a.epochs_s)
    argv = list(shared)
    for _, distill, weights in students:
        argv += ["--student", " ".join(["--distill", distill] + weights)]
    fe.call(train_group.main, argv)
    for label, distill, weights in students:
        opt = train_student.parse_option(shared + ["--distill", distill] + weights)
        train_student.name_run(opt, a.teacher)
        rows.append((label + (" (-c 0.1 -d 0.9, published)" if label == "kd" else
                              f" (-c 1 -d 1 -b {a.cka_beta})" if distill == "cka_group" else ""), a.student,
                     summary(opt.save_folder)))

    n = a.train_subset or 60000
    print(f"\nFashion-MNIST, {n} training images, full 10,000-image test set; "
          f"teacher {a.epochs_t} epochs, students {a.epochs_s} epochs, batch {a.batch_size}, seed from trial {a.trial}")
    print(f"| {'run':<34} | {'model':<10} | {'best top-1':>10} | {'last top-1':>10} | {'train time':>10} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 12}|")
    for label, model, s in rows:
        print(f"| {label:<34} | {model:<10} | {s['best_acc']:>10.2f} | {s['last_acc']:>10.2f} | "
              f"{s['train_time_s']:>9.0f}s |")
    print(f"(the three students trained as one group: their train time is the group's)")
    print(f"\ntotal {time.time() - t0:.0f}s; run folders under {a.save_dir} "
          f"(student folders are named S{SPLIT}<student>_T{SPLIT}<teacher>_...)")


if __name__ == "__main__":
    main()
