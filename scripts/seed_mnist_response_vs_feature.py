"""seeds/000: response-based vs feature-based distillation on MNIST, through the codebase, paired.

The seed's experiment: a CNN teacher (3 conv layers, 512-d hidden layer; ``cnn_mnist_teacher``) trained
for 8 epochs, then three copies of a small CNN student (2 conv layers, 128-d hidden; ``cnn_mnist_student``)
trained for 3 epochs each, all with Adam lr 1e-3 and batch 64:

* label only          plain cross-entropy: --distill kd -c 1 -d 0 -b 0 (no distillation term: the run
                      train_teacher.py --model cnn_mnist_student makes, bitwise; tests/test_group.py)
* output distillation the seed's ``0.7 * CE + 0.3 * T^2 KL(T=3)`` (alpha = 0.7 weighs the *CE* term):
                      --distill kd -c 0.7 -d 0.3 --kd_T 3
* feature distillation the seed's normalised regressor: Linear(128->512)+BatchNorm1d on the student's hidden
                      vector, both vectors L2-normalised, MSE, ``0.7 * CE + 0.3 * MSE``, trained jointly:
                      --distill hint --hint_layer -1 --hint_regressor linear --hint_norm --init_epochs 0
                      -c 0.7 -d 0 -b 0.3

The teacher is trained once (trial 0). The three students are one train_group.py group per trial
(``--trials``, default 1..5): trial t reads the data in one order (``--data_seed t``) for all three and
starts all three from one initialisation (``--seed t``; its checksum is printed per trial). The table
(``<save_dir>/seed_mnist.md``/``.json``): each student's last-epoch test accuracy, mean +- std over the
trials, its paired difference to the label-only student with a 95% interval, the per-epoch accuracy
averaged over the trials (the seed printed it per epoch), and a PNG of those curves (matplotlib, optional).

    python scripts/seed_mnist_response_vs_feature.py --data_folder ./data            # MNIST
    python scripts/seed_mnist_response_vs_feature.py --dataset fashionmnist            # Debian's copy
    python scripts/seed_mnist_response_vs_feature.py --dataset fashionmnist --smoke    # CI-sized

As in the seed, no training augmentation (``--no_augment``: shuffled images, no crop or flip). Differences
from the seed's notebook: every student of a trial starts from the same initialisation, and there are
several trials.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_common as sc  # noqa: E402

ADAM = ["--optimizer", "adam", "--learning_rate", "1e-3", "--weight_decay", "0"]
REFERENCE = "Label only"
ROWS = [
    (REFERENCE, "--distill kd -c 1 -d 0 -b 0"),
    ("Output distillation (KD, T=3)", "--distill kd -c 0.7 -d 0.3 -b 0 --kd_T 3"),
    ("Feature distillation (normalised regressor)", "--distill hint --hint_layer -1 --hint_regressor linear "
                                                    "--hint_norm --init_epochs 0 -c 0.7 -d 0 -b 0.3"),
]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_t", default="cnn_mnist_teacher", help="teacher (the seed's CNN by default)")
    p.add_argument("--model_s", default="cnn_mnist_student", help="student (the seed's CNN by default)")
    p.add_argument("--teacher_epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--path_t", default=None, help="use this trained teacher instead of training one")
    p.add_argument("--plot", default=None, help="PNG of the accuracy curves (default <save_dir>/seed_mnist.png)")
    sc.add_common_args(p, dataset="MNIST", save_name="mnist_response_vs_feature", native="mnist", grouped=True)
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
    trials = sc.parse_trials(args)
    sc.require_dataset(args, args.dataset)
    common = sc.common_flags(args, args.dataset, batch_size=64) + ADAM + ["--no_augment"]  # the seed: ToTensor only

    trained, teacher_acc = sc.teacher_and_groups(args, ROWS, trials, common, common)

    table, numbers = sc.paired_results(trained, ROWS, trials, REFERENCE)
    data = {"dataset": args.dataset, "teacher": args.model_t, "student": args.model_s, "teacher_acc": teacher_acc,
            "smoke": args.smoke} | numbers
    text = (f"## seeds/000 on {args.dataset}: {args.model_t} -> {args.model_s}, {len(trials)} trial(s)"
            f"{' (smoke run)' if args.smoke else ''}\n\n"
            f"Teacher test accuracy: {sc.fmt(teacher_acc)}%. " + table)
    plot = args.plot or os.path.join(args.save_dir, "seed_mnist.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
    data["plot"] = plot_curves(plot, {k: v["curve"] for k, v in data["rows"].items()},
                               f"Knowledge distillation on {args.dataset}: {args.model_t} -> {args.model_s} "
                               f"(mean of {len(trials)} trial{'s' if len(trials) > 1 else ''})")
    if data["plot"]:
        text += f"\nPlot: {data['plot']}\n"
    sc.write_results(args, "seed_mnist", text, data)
    if not data["same_init"]:
        sys.exit(1)


if __name__ == "__main__":
    sc.main_guard(main)
