"""seeds/004: four ways to train a VGGCifar5 student from a VGGCifar9 teacher on CIFAR-10.

The seed's assignment, through the codebase: every student is VGGCifar5 from the *same* initial
weights (one --seed for every run; checked here by a checksum of each run's initial student), trained
5 epochs with Adam lr 0.01, batch 128, cosine annealing per step to 0, no weight decay:

* CE                  train_teacher.py --model VGGCifar5 (cross-entropy only)
* KD (T=10)           0.5 * CE + 0.5 * T^2 KL: --distill kd -c 0.5 -d 0.5 -b 0 --kd_T 10
* cosine loss         0.5 * CE + 0.5 * (1 - cos) on the flattened last conv maps (the teacher's 512x2x2
                      average-pooled to the student's 256x2x2): --distill cosine -c 0.5 -d 0 -b 0.5
* regressor + MSE     3x3 conv + BN regressor from the student's 256x2x2 map to the teacher's 512x2x2,
                      0.5 * CE + 0.5 * MSE, trained jointly: --distill hint --hint_layer -2
                      --hint_regressor convbn --init_epochs 0 -c 0.5 -d 0 -b 0.5

The teacher is trained here (--teacher_epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, cosine, batch 128:
our choice; the seed downloaded a pretrained one), or given with --path_t.

    python scripts/seed_vgg_cifar10.py --data_folder ./data
    python scripts/seed_vgg_cifar10.py --data_folder ./data --smoke

As in the seed, no training augmentation (``--no_augment``). One difference from the seed's notebook:
the loader normalises with CIFAR-10's mean/std where the seed used raw [0, 1] pixels, so its pretrained
teacher (``{'state_dict': ...}``, loadable with --path_t) loses accuracy on our inputs.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_common as sc  # noqa: E402

STUDENT_OPT = ["--optimizer", "adam", "--learning_rate", "0.01", "--weight_decay", "0", "--lr_schedule", "cosine"]
TEACHER_OPT = ["--optimizer", "sgd", "--learning_rate", "0.05", "--weight_decay", "5e-4", "--lr_schedule", "cosine"]

METHODS = [
    ("CE", None),
    ("KD (T=10, 0.5/0.5)", ["--distill", "kd", "-c", "0.5", "-d", "0.5", "-b", "0", "--kd_T", "10"]),
    ("Cosine loss (0.5/0.5)", ["--distill", "cosine", "-c", "0.5", "-d", "0", "-b", "0.5"]),
    ("Regressor + MSE (0.5/0.5)", ["--distill", "hint", "--hint_layer", "-2", "--hint_regressor", "convbn",
                                   "--init_epochs", "0", "-c", "0.5", "-d", "0", "-b", "0.5"]),
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_t", default="VGGCifar9", help="teacher (the seed's VGGCifar9 by default)")
    p.add_argument("--model_s", default="VGGCifar5", help="student (the seed's VGGCifar5 by default)")
    p.add_argument("--path_t", default=None, help="a trained teacher checkpoint instead of training one")
    p.add_argument("--teacher_epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=5, help="student epochs (the seed's 5)")
    sc.add_common_args(p, dataset="CIFAR-10", save_name="vgg_cifar10", native="cifar10")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    sc.require_dataset(args, args.dataset)
    common = sc.common_flags(args, args.dataset, batch_size=128) + ["--no_augment"]  # the seed: ToTensor only
    e_s = sc.epochs(args, args.epochs)
    if args.path_t:
        path_t, teacher_acc = args.path_t, None
    else:
        t = sc.train_vanilla(args, ["--model", args.model_t, "--epochs", sc.epochs(args, args.teacher_epochs),
                                    "--trial", "0"] + common + TEACHER_OPT, "teacher")
        path_t, teacher_acc = t["checkpoint"], t["summary"]["last_acc"]

    runs = {}
    with sc.InitRecorder(args.model_s) as init:
        for label, flags in METHODS:
            if flags is None:
                r = sc.train_vanilla(args, ["--model", args.model_s, "--epochs", e_s, "--trial", "0"]
                                     + common + STUDENT_OPT, f"student: {label}")
            else:
                r = sc.train_distilled(args, ["--path_t", path_t, "--model_t", args.model_t, "--model_s", args.model_s]
                                       + flags + ["--epochs", e_s, "--trial", "0"] + common + STUDENT_OPT,
                                       args.model_t, f"student: {label}")
                if teacher_acc is None:
                    teacher_acc = r["summary"].get("teacher_acc")
            r["init"] = init.take()
            runs[label] = r

    inits = {r["init"] for r in runs.values() if r["init"]}
    rows = [["Teacher " + args.model_t, sc.fmt(teacher_acc), "", ""]]
    data = {"teacher": args.model_t, "student": args.model_s, "teacher_acc": teacher_acc, "smoke": args.smoke,
            "same_init": len(inits) <= 1, "runs": {}}
    for label, r in runs.items():
        s = r["summary"]
        rows.append([label, sc.fmt(s["last_acc"]), sc.fmt(s["best_acc"]), r["init"] or "(reused)"])
        data["runs"][label] = {"last_acc": s["last_acc"], "best_acc": s["best_acc"], "folder": r["folder"],
                               "init": r["init"], "test_acc": [m["test_acc"] for m in r["metrics"]]}
    text = (f"## seeds/004 on CIFAR-10: {args.model_t} -> {args.model_s}, {e_s} epochs"
            f"{' (smoke run)' if args.smoke else ''}\n\n"
            + sc.markdown_table(["model / method", "test acc (last epoch)", "best epoch", "initial student checksum"],
                                rows)
            + ("\nAll students started from the same initial weights.\n" if len(inits) == 1 else
               "\nWARNING: the students did not all start from the same initial weights.\n" if inits else "")
            + "\nThe seed's numbers (its pretrained 92.95% teacher): CE 82.44, KD 85.43, cosine 82.91, "
              "regressor + MSE 83.11.\n")
    sc.write_results(args, "seed_vgg_cifar10", text, data)
    if len(inits) > 1:
        sys.exit(1)


if __name__ == "__main__":
    sc.main_guard(main)
