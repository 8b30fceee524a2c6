"""seeds/000: response-based vs feature-based distillation on MNIST, through the codebase.

The seed's experiment: a CNN teacher (3 conv layers, 512-d hidden layer; ``cnn_mnist_teacher``) trained
for 8 epochs, then three copies of a small CNN student (2 conv layers, 128-d hidden; ``cnn_mnist_student``)
trained for 3 epochs each, all with Adam lr 1e-3 and batch 64:

* label only          train_teacher.py --model cnn_mnist_student (plain cross-entropy)
* output distillation the seed's ``0.7 * CE + 0.3 * T^2 KL(T=3)`` (alpha = 0.7 weighs the *CE* term):
                      --distill kd -c 0.7 -d 0.3 --kd_T 3
* feature distillation the seed's normalised regressor: Linear(128->512)+BatchNorm1d on the student's hidden
                      vector, both vectors L2-normalised, MSE, ``0.7 * CE + 0.3 * MSE``, trained jointly:
                      --distill hint --hint_layer -1 --hint_regressor linear --hint_norm --init_epochs 0
                      -c 0.7 -d 0 -b 0.3

It prints the test accuracy of every epoch of the three students, saves the table
(``<save_dir>/seed_mnist.md``/``.json``) and a PNG of the three curves (matplotlib, optional).

    python scripts/seed_mnist_response_vs_feature.py --data_folder ./data            # MNIST
    python scripts/seed_mnist_response_vs_feature.py --dataset fashionmnist            # Debian's copy
    python scripts/seed_mnist_response_vs_feature.py --dataset fashionmnist --smoke    # CI-sized

As in the seed, no training augmentation (``--no_augment``: shuffled images, no crop or flip). One
difference from the seed's notebook: every student starts from the same initialisation (--seed).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_common as sc  # noqa: E402

ADAM = ["--optimizer", "adam", "--learning_rate", "1e-3", "--weight_decay", "0"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_t", default="cnn_mnist_teacher", help="teacher (the seed's CNN by default)")
    p.add_argument("--model_s", default="cnn_mnist_student", help="student (the seed's CNN by default)")
    p.add_argument("--teacher_epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--path_t", default=None, help="use this trained teacher instead of training one")
    p.add_argument("--plot", default=None, help="PNG of the accuracy curves (default <save_dir>/seed_mnist.png)")
    sc.add_common_args(p, dataset="MNIST", save_name="mnist_response_vs_feature", native="mnist")
    return p.parse_args(argv)


def plot_curves(path: str, curves: dict, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no plot was drawn (pip install matplotlib); "
              "the table above has the same numbers")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (label, acc), marker in zip(curves.items(), "os^vD"):
        ax.plot(range(1, len(acc) + 1), acc, marker=marker, label=label)
    ax.set_xticks(range(1, max(len(a) for a in curves.values()) + 1))
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title)
    ax.grid(True)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    args = parse(argv)
    sc.require_dataset(args, args.dataset)
    common = sc.common_flags(args, args.dataset, batch_size=64) + ADAM + ["--no_augment"]  # the seed: ToTensor only
    e_s = sc.epochs(args, args.epochs)

    if args.path_t:
        path_t, teacher_acc, teacher_arch = args.path_t, None, args.model_t
    else:
        t = sc.train_vanilla(args, ["--model", args.model_t, "--epochs", sc.epochs(args, args.teacher_epochs),
                                    "--trial", "0"] + common, "teacher")
        path_t, teacher_acc, teacher_arch = t["checkpoint"], t["summary"]["last_acc"], args.model_t
    teacher_flags = ["--path_t", path_t, "--model_t", teacher_arch]

    runs = {}
    with sc.InitRecorder(args.model_s) as init:
        runs["Label only"] = sc.train_vanilla(
            args, ["--model", args.model_s, "--epochs", e_s, "--trial", "0"] + common, "student, labels only")
        runs["Label only"]["init"] = init.take()
        runs["Output distillation (KD, T=3)"] = sc.train_distilled(
            args, teacher_flags + ["--model_s", args.model_s, "--distill", "kd", "-c", "0.7", "-d", "0.3", "-b", "0",
                                   "--kd_T", "3", "--epochs", e_s, "--trial", "0"] + common,
            teacher_arch, "student, output distillation")
        runs["Output distillation (KD, T=3)"]["init"] = init.take()
        runs["Feature distillation (normalised regressor)"] = sc.train_distilled(
            args, teacher_flags + ["--model_s", args.model_s, "--distill", "hint", "--hint_layer", "-1",
                                   "--hint_regressor", "linear", "--hint_norm", "--init_epochs", "0",
                                   "-c", "0.7", "-d", "0", "-b", "0.3", "--epochs", e_s, "--trial", "0"] + common,
            teacher_arch, "student, feature distillation")
        runs["Feature distillation (normalised regressor)"]["init"] = init.take()

    if teacher_acc is None:
        teacher_acc = next((r["summary"].get("teacher_acc") for r in runs.values()
                            if r["summary"].get("teacher_acc") is not None), None)
    n_ep = max(len(r["metrics"]) for r in runs.values())
    header = ["student"] + [f"epoch {i}" for i in range(1, n_ep + 1)] + ["best"]
    rows, data = [], {"dataset": args.dataset, "teacher": args.model_t, "student": args.model_s,
                      "teacher_acc": teacher_acc, "smoke": args.smoke, "runs": {}}
    for label, r in runs.items():
        acc = [m["test_acc"] for m in r["metrics"]]
        rows.append([label] + [sc.fmt(a) for a in acc] + [""] * (n_ep - len(acc)) + [sc.fmt(r["summary"]["best_acc"])])
        data["runs"][label] = {"test_acc": acc, "best_acc": r["summary"]["best_acc"],
                               "last_acc": r["summary"]["last_acc"], "folder": r["folder"], "init": r["init"]}
    inits = {r["init"] for r in runs.values() if r["init"]}
    text = (f"## seeds/000 on {args.dataset}: {args.model_t} -> {args.model_s}"
            f"{' (smoke run)' if args.smoke else ''}\n\n"
            f"Teacher test accuracy: {sc.fmt(teacher_acc)}%. Test accuracy (%) after each student epoch:\n\n"
            + sc.markdown_table(header, rows)
            + ("\nEvery student started from the same initial weights (checksum "
               f"{inits.pop()}).\n" if len(inits) == 1 else
               "\nWARNING: the students did not start from the same initial weights.\n" if inits else ""))
    plot = args.plot or os.path.join(args.save_dir, "seed_mnist.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
    data["plot"] = plot_curves(plot, {k: v["test_acc"] for k, v in data["runs"].items()},
                               f"Knowledge distillation on {args.dataset}: {args.model_t} -> {args.model_s}")
    if data["plot"]:
        text += f"\nPlot: {data['plot']}\n"
    sc.write_results(args, "seed_mnist", text, data)


if __name__ == "__main__":
    sc.main_guard(main)
