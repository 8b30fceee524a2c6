"""The Fashion-MNIST evidence of RESULTS.md, rerunnable: one teacher, then student suites.

    python scripts/fashion_experiments.py --suite methods   # every --distill name once, same teacher/schedule
    python scripts/fashion_experiments.py --suite cka       # baseline, kd, cka_group dp/uniform/random x 3 seeds

Each run goes through train_teacher.py / train_student.py (their main functions); finished runs
(a summary.json whose last epoch is the last epoch asked for) are skipped, so an interrupted suite
continues where it stopped. The tables are printed and written to --out (markdown).

Protocols. ``methods``: every method with its published RepDistiller/SemCKD/SimKD weights
(the class's ``recommended``), init stages of epochs/8, FitNet with its init stage at hint layer 2.
``cka``: CE + KD (-c 1 -d 1) for kd and every cka_group variant, so that the CKA term (-b) is the only
difference between kd and cka_group rows; the baseline is plain CE (train_teacher.py on the student).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_student  # noqa: E402
import train_teacher  # noqa: E402
from distiller_zoo import DISTILLERS  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("methods", "cka", "teacher"), required=True)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--train_subset", type=int, default=10000, help="student training images (0: all)")
    p.add_argument("--teacher_subset", type=int, default=30000, help="teacher training images (0: all 60,000)")
    p.add_argument("--epochs", type=int, default=10, help="student epochs")
    p.add_argument("--teacher_epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seeds", default="1,2,3", help="trials of the cka suite")
    p.add_argument("--methods", default="all", help="comma-separated --distill names of the methods suite")
    p.add_argument("--cka_beta", type=float, default=1.0)
    p.add_argument("--cka_variants", default="dp,uniform,random",
                   help="cka_group groupings of the cka suite (a subset lets a second process share the work)")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--save_dir", default="./save/fashion")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="markdown file for the table")
    p.add_argument("--extra", default="", help="more flags for every student run (quoted)")
    return p.parse_args(argv)


def schedule(epochs: int) -> str:
    """RepDistiller's step decay compressed to the run: x0.1 at 5/8, 3/4 and 7/8 of it."""
    return ",".join(str(e) for e in sorted({max(1, round(epochs * f)) for f in (0.625, 0.75, 0.875)}))


def common(a, epochs, subset):
    return ["--dataset", "fashionmnist", "--data_folder", a.data_folder, "--train_subset", str(subset),
            "--epochs", str(epochs), "--lr_decay_epochs", schedule(epochs), "--batch_size", str(a.batch_size),
            "--save_dir", a.save_dir, "--device", a.device, "--print_freq", "0", "--save_freq", "0"]


def finished(folder: str, epochs: int) -> dict | None:
    path = os.path.join(folder, "summary.json")
    if os.path.isfile(path):
        s = json.load(open(path))
        if s.get("last_epoch") == epochs:
            return s
    return None


def call(fn, argv) -> None:
    try:
        fn(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def train_teacher_run(a, model, epochs, subset, trial) -> dict:
    folder = os.path.join(a.save_dir, "teachers", "models", f"{model}_vanilla_fashionmnist_trial_{trial}")
    s = finished(folder, epochs)
    if s is None:
        call(train_teacher.main, ["--model", model, "--trial", str(trial)] + common(a, epochs, subset))
        s = finished(folder, epochs)
    s["folder"] = folder
    return s


def student_run(a, label, flags, trial, path_t, tag="") -> dict:
    """One student run. Variants of one method share a trial's seed but not its folder: the trial is
    named "<tag>_<n>" and the seed set to n (the convention of scripts/run_cka_group.sh)."""
    name = f"{tag}_{trial}" if tag else str(trial)
    argv = ["--path_t", path_t, "--model_s", a.student, "--trial", name, "--seed", str(trial),
            "--skip-validation"] + flags \
        + common(a, a.epochs, a.train_subset) + (a.extra.split() if a.extra else [])
    opt = train_student.parse_option(argv)
    train_student.name_run(opt, a.teacher)
    s = finished(opt.save_folder, a.epochs)
    if s is None:
        t0 = time.time()
        print(f"==> {label} (trial {trial})", flush=True)
        call(train_student.main, argv)
        s = finished(opt.save_folder, a.epochs)
        print(f"    {label}: best {s['best_acc']:.2f} last {s['last_acc']:.2f} ({time.time() - t0:.0f}s)", flush=True)
    s["folder"] = opt.save_folder
    return s


def method_flags(name: str, epochs: int) -> list:
    cls = DISTILLERS[name]
    flags = ["--distill", name] + cls.recommended.split()
    if cls.init_stage:
        flags += ["--init_epochs", str(max(1, round(epochs / 8)))]
    if name == "hint":
        flags += ["--hint_layer", "2"]
    return flags


def fmt(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv=None):
    a = parse(argv)
    t0 = time.time()
    teacher = train_teacher_run(a, a.teacher, a.teacher_epochs, a.teacher_subset, 0)
    path_t = os.path.join(teacher["folder"], f"{a.teacher}_best.pth")
    head = (f"Fashion-MNIST; teacher {a.teacher} ({a.teacher_subset or 60000} images, {a.teacher_epochs} epochs): "
            f"best {teacher['best_acc']:.2f} / last {teacher['last_acc']:.2f}; students {a.student} on "
            f"{a.train_subset or 60000} images (stratified, seeded), {a.epochs} epochs, batch {a.batch_size}, "
            f"SGD 0.05 with x0.1 at epochs {schedule(a.epochs)}; top-1 on the 10,000 test images")
    lines = [head, ""]
    if a.suite == "teacher":
        print(head)
        return
    if a.suite == "methods":
        names = sorted(DISTILLERS) if a.methods == "all" else a.methods.split(",")
        base = train_teacher_run(a, a.student, a.epochs, a.train_subset, 1)
        rows = [("baseline (CE)", "", base)]
        for name in names:
            flags = method_flags(name, a.epochs)
            rows.append((name, " ".join(flags[2:]), student_run(a, name, flags, 1, path_t)))
        lines += ["| method | flags | best top-1 | last top-1 | vs baseline (last) |", "|---|---|---|---|---|"]
        for name, flags, s in rows:
            lines.append(f"| {name} | {flags} | {s['best_acc']:.2f} | {s['last_acc']:.2f} | "
                         f"{s['last_acc'] - base['last_acc']:+.2f} |")
    else:
        trials = [int(t) for t in a.seeds.split(",")]
        configs = [("kd", "", ["--distill", "kd", "-c", "1", "-d", "1", "-b", "0"])] + [
            (f"cka_group {g}", f"grouping-{g}", ["--distill", "cka_group", "-c", "1", "-d", "1", "-b",
                                                 str(a.cka_beta), "--cka_grouping", g])
            for g in a.cka_variants.split(",")]
        table = {"baseline (CE)": [train_teacher_run(a, a.student, a.epochs, a.train_subset, t) for t in trials]}
        for label, tag, flags in configs:
            table[label] = [student_run(a, label, flags, t, path_t, tag) for t in trials]
        lines += [f"{len(trials)} seeds (trials {a.seeds}); mean ± std", "",
                  "| run | best top-1 | last top-1 | runs |", "|---|---|---|---|"]
        for label, runs in table.items():
            lines.append(f"| {label} | {fmt([r['best_acc'] for r in runs])} | {fmt([r['last_acc'] for r in runs])} "
                         f"| {len(runs)} |")
        lines += ["", f"cka_group -b {a.cka_beta}, unbiased estimator, layers pooled to 4x4, n: auto (knee). "
                      "Groups (teacher ends | student ends) per trial:"]
        for label, runs in table.items():
            if label.startswith("cka_group"):
                cuts = []
                for r in runs:
                    g = json.load(open(os.path.join(r["folder"], "cka_grouping.json")))
                    cuts.append(f"{g['teacher_ends']} | {g['student_ends']}")
                lines.append(f"- {label}: " + "; ".join(cuts))
    lines.append(f"\n(total wall time of this invocation: {time.time() - t0:.0f}s)")
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
