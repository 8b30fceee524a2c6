"""seeds/003: offline, online and self-distillation of ResNet18 on CIFAR-100, with and without mixup.

The seed's blog post and notes, through the codebase. Every run: SGD (momentum 0.9, wd 5e-4), cosine
annealing with a linear warm-up (--lr_schedule cosine --warmup_epochs), --epochs (the seed's 200), batch 64,
lr 0.05; once without and once with mixup (--mixup, alpha --mixup_alpha):

* baseline         train_teacher.py --model ResNet18 (cross-entropy only)
* offline KD       a ResNet50 teacher trained first (same recipe, no mixup) and frozen:
                   --distill kd --kd_mode offline -c 1 -d 1
* online KD        deep mutual learning with a ResNet50 peer trained alongside from scratch:
                   --distill kd --kd_mode online --model_t ResNet50 -c 1 -d 1
* self-distillation the student's own exponential moving average teaches it:
                   --distill kd --kd_mode self -c 1 -d 1 (--self_ema 0.999)

The seed gives no loss weights, learning rate or mixup alpha: KD is ``CE + T^2 KL(T=4)`` in all three
modes (so only the teacher differs), lr 0.05 as RepDistiller, mixup alpha 1.0 (Zhang et al.'s CIFAR
value), 5 warm-up epochs. Runs with mixup are named ``--trial mixup_<n>``; all runs use --seed.

    python scripts/seed_offline_online_self.py --data_folder ./data
    python scripts/seed_offline_online_self.py --data_folder ./data --smoke
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_common as sc  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_t", default="ResNet50", help="offline teacher and online peer (the seed's ResNet50)")
    p.add_argument("--model_s", default="ResNet18", help="student (the seed's ResNet18)")
    p.add_argument("--path_t", default=None, help="a trained offline teacher instead of training one")
    p.add_argument("--epochs", type=int, default=200, help="epochs of every run (the seed's 200)")
    p.add_argument("--teacher_epochs", type=int, default=None, help="offline teacher epochs (default --epochs)")
    p.add_argument("--learning_rate", type=float, default=0.05)
    p.add_argument("--warmup_epochs", type=float, default=5.0)
    p.add_argument("--mixup_alpha", type=float, default=1.0)
    p.add_argument("--self_ema", type=float, default=0.999, help="EMA decay of the self-distillation teacher")
    p.add_argument("--kd_T", type=float, default=4.0)
    sc.add_common_args(p, dataset="CIFAR-100", save_name="offline_online_self", native="cifar100")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    sc.require_dataset(args, args.dataset)
    recipe = ["--optimizer", "sgd", "--learning_rate", str(args.learning_rate), "--momentum", "0.9",
              "--weight_decay", "5e-4", "--lr_schedule", "cosine",
              "--warmup_epochs", "0" if args.smoke else str(args.warmup_epochs)]
    common = sc.common_flags(args, args.dataset, batch_size=64) + recipe
    e = sc.epochs(args, args.epochs)
    kd = ["--distill", "kd", "-c", "1", "-d", "1", "-b", "0", "--kd_T", str(args.kd_T)]

    teacher_acc = None
    if args.path_t:
        path_t = args.path_t
    else:
        t = sc.train_vanilla(args, ["--model", args.model_t, "--epochs",
                                    sc.epochs(args, args.teacher_epochs or args.epochs), "--trial", "0"] + common,
                             "offline teacher")
        path_t, teacher_acc = t["checkpoint"], t["summary"]["last_acc"]

    methods = [
        ("Baseline (labels only)", None, None),
        (f"Offline KD ({args.model_t} teacher)", ["--kd_mode", "offline", "--path_t", path_t, "--model_t", args.model_t],
         args.model_t),
        (f"Online KD / DML ({args.model_t} peer)", ["--kd_mode", "online", "--model_t", args.model_t], args.model_t),
        ("Self-distillation (EMA teacher)", ["--kd_mode", "self", "--self_ema", str(args.self_ema)], args.model_s),
    ]
    results = {}
    with sc.InitRecorder(args.model_s) as init:
        for mix in (False, True):
            trial = ["--trial", "mixup_0" if mix else "0"] + (["--mixup", str(args.mixup_alpha)] if mix else [])
            for label, flags, t_arch in methods:
                what = f"{label}, {'with' if mix else 'without'} mixup"
                if flags is None:
                    r = sc.train_vanilla(args, ["--model", args.model_s, "--epochs", e] + trial + common, what)
                else:
                    r = sc.train_distilled(args, ["--model_s", args.model_s] + flags + kd + ["--epochs", e]
                                           + trial + common, t_arch, what)
                r["init"] = init.take()
                results[(label, mix)] = r
                if teacher_acc is None and r["summary"].get("teacher_acc") is not None:
                    teacher_acc = r["summary"]["teacher_acc"]

    rows, data = [], {"teacher": args.model_t, "student": args.model_s, "teacher_acc": teacher_acc,
                      "smoke": args.smoke, "runs": {}}
    for label, _, _ in methods:
        row = [label]
        for mix in (False, True):
            s = results[(label, mix)]["summary"]
            row.append(f"{sc.fmt(s['last_acc'])} / {sc.fmt(s['best_acc'])}")
            data["runs"][f"{label} | {'mixup' if mix else 'no mixup'}"] = {
                "last_acc": s["last_acc"], "best_acc": s["best_acc"], "folder": results[(label, mix)]["folder"],
                "init": results[(label, mix)]["init"]}
        rows.append(row)
    inits = {r["init"] for r in results.values() if r["init"]}
    text = (f"## seeds/003 on CIFAR-100: {args.model_s} (teacher / peer {args.model_t}), {e} epochs, cosine "
            f"with warm-up{' (smoke run)' if args.smoke else ''}\n\n"
            f"Offline teacher test accuracy: {sc.fmt(teacher_acc)}%. Cells: test accuracy of the last / best epoch.\n\n"
            + sc.markdown_table(["method", "without mixup", f"with mixup (alpha {args.mixup_alpha:g})"], rows)
            + ("\nEvery student started from the same initial weights.\n" if len(inits) == 1 else
               "\nWARNING: the students did not all start from the same initial weights.\n" if inits else "")
            + "\nThe seed's notes (ResNet18, 200 epochs): student only 74.4, self 77.89, self + teacher 77.95, "
              "teacher 77.56, teacher without mixup 76.86.\n")
    sc.write_results(args, "seed_offline_online_self", text, data)


if __name__ == "__main__":
    sc.main_guard(main)
