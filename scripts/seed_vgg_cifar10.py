"""seeds/004: four ways to train a VGGCifar5 student from a VGGCifar9 teacher on CIFAR-10, paired.

The seed's assignment, through the codebase: every student is VGGCifar5 from the *same* initial
weights, trained 5 epochs with Adam lr 0.01, batch 128, cosine annealing per step to 0, no weight decay:

* CE                  cross-entropy only: --distill kd -c 1 -d 0 -b 0 (no distillation term: the run
                      train_teacher.py --model VGGCifar5 makes, bitwise; tests/test_group.py)
* KD (T=10)           0.5 * CE + 0.5 * T^2 KL: --distill kd -c 0.5 -d 0.5 -b 0 --kd_T 10
* cosine loss         0.5 * CE + 0.5 * (1 - cos) on the flattened last conv maps (the teacher's 512x2x2
                      average-pooled to the student's 256x2x2): --distill cosine -c 0.5 -d 0 -b 0.5
* regressor + MSE     3x3 conv + BN regressor from the student's 256x2x2 map to the teacher's 512x2x2,
                      0.5 * CE + 0.5 * MSE, trained jointly: --distill hint --hint_layer -2
                      --hint_regressor convbn --init_epochs 0 -c 0.5 -d 0 -b 0.5

The teacher is trained here once (trial 0; --teacher_epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, cosine,
batch 128: our choice; the seed downloaded a pretrained one), or given with --path_t. The four students
are one train_group.py group per trial (``--trials``, default 1..5): trial t reads the data in one order
(``--data_seed t``) and starts every student from one initialisation (``--seed t``; its checksum is printed
per trial). The table (``<save_dir>/seed_vgg_cifar10.md``/``.json``): each method's last-epoch test
accuracy, mean +- std over the trials, its paired difference to CE with a 95% interval, and the per-epoch
accuracy averaged over the trials.

    python scripts/seed_vgg_cifar10.py --data_folder ./data
    python scripts/seed_vgg_cifar10.py --dataset fashionmnist     # the same protocol on Debian's Fashion-MNIST
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

REFERENCE = "CE"
ROWS = [
    (REFERENCE, "--distill kd -c 1 -d 0 -b 0"),
    ("KD (T=10, 0.5/0.5)", "--distill kd -c 0.5 -d 0.5 -b 0 --kd_T 10"),
    ("Cosine loss (0.5/0.5)", "--distill cosine -c 0.5 -d 0 -b 0.5"),
    ("Regressor + MSE (0.5/0.5)", "--distill hint --hint_layer -2 --hint_regressor convbn --init_epochs 0 "
                                  "-c 0.5 -d 0 -b 0.5"),
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_t", default="VGGCifar9", help="teacher (the seed's VGGCifar9 by default)")
    p.add_argument("--model_s", default="VGGCifar5", help="student (the seed's VGGCifar5 by default)")
    p.add_argument("--path_t", default=None, help="a trained teacher checkpoint instead of training one")
    p.add_argument("--teacher_epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=5, help="student epochs (the seed's 5)")
    sc.add_common_args(p, dataset="CIFAR-10", save_name="vgg_cifar10", native="cifar10", grouped=True)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    trials = sc.parse_trials(args)
    sc.require_dataset(args, args.dataset)
    common = sc.common_flags(args, args.dataset, batch_size=128) + ["--no_augment"]  # the seed: ToTensor only
    e_s = sc.epochs(args, args.epochs)
    trained, teacher_acc = sc.teacher_and_groups(args, ROWS, trials, common + TEACHER_OPT,
                                                 common + STUDENT_OPT)

    table, numbers = sc.paired_results(trained, ROWS, trials, REFERENCE)
    data = {"dataset": args.dataset, "teacher": args.model_t, "student": args.model_s, "teacher_acc": teacher_acc,
            "smoke": args.smoke} | numbers
    text = (f"## seeds/004 on {args.dataset}: {args.model_t} -> {args.model_s}, {e_s} epochs, "
            f"{len(trials)} trial(s){' (smoke run)' if args.smoke else ''}\n\n"
            f"Teacher {args.model_t} test accuracy: {sc.fmt(teacher_acc)}%. " + table
            + "\nThe seed's numbers (CIFAR-10, its pretrained 92.95% teacher, one run): CE 82.44, KD 85.43, "
              "cosine 82.91, regressor + MSE 83.11.\n")
    sc.write_results(args, "seed_vgg_cifar10", text, data)
    if not data["same_init"]:
        sys.exit(1)


if __name__ == "__main__":
    sc.main_guard(main)
