"""A comparison table of methods, paired: every trial is one group of students (train_group.py) on one
data stream, and each method's difference to a reference row is measured per trial.

    python scripts/paired_table.py --table tables/fashion_paired.txt --trials 1,2,3,4,5 --reference kd \
        --out results/paired.md -- --path_t save/.../resnet20_best.pth --model_s resnet8 \
        --dataset fashionmnist --train_subset 20000 --epochs 8 --lr_decay_epochs 5,6,7 --skip-validation

The table file has one row per line, ``label | train_student.py flags`` (``#`` starts a comment); the
flags after ``--`` are shared by every row. Trial t runs the rows as one group with ``--data_seed t`` (the
same subset, order and augmentation for every row) and gives row ``label`` ``--trial <label>_<t> --seed t``
(its own folder; the same initialisation for every row of one architecture). ``--max_group K`` splits a
long table into groups of at most K rows: they stay paired, since the data stream is a function of the
data seed alone. Finished students are skipped and unfinished ones resumed (``--resume_all``), so an
interrupted table continues where it stopped; ``--report_only`` only reads the run folders.

The report: per row, the mean +- std over trials of the last-epoch (and best) test top-1; per row, the
paired differences to the reference row (last epoch): their mean, std and a 95% interval from the paired
t distribution (n - 1 degrees of freedom), "distinguishable" when the interval excludes zero. A row whose
run diverged in some trial is reported with those trials left out of its differences (said in the table).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_group  # noqa: E402
import train_student  # noqa: E402
from helper.errors import ConfigError  # noqa: E402


def read_table(path: str) -> list:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if "|" not in line:
                raise ConfigError(f"{path}:{n}: write 'label | flags'")
            label, flags = (x.strip() for x in line.split("|", 1))
            rows.append((label, flags))
    labels = [label for label, _ in rows]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: row labels must be unique")
    return rows


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")


def row_flags(label: str, flags: str, trial: int) -> str:
    return f"{flags} --trial {slug(label)}_{trial} --seed {trial}"


def t_quantile(p: float, df: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(p, df))


def paired(diffs: list) -> dict:
    """Mean, std, 95% interval (paired t) and whether the interval excludes zero."""
    n = len(diffs)
    out = {"n": n, "mean": statistics.mean(diffs) if diffs else math.nan}
    if n < 2:
        return out | {"std": math.nan, "ci95": (math.nan, math.nan), "distinguishable": False}
    sd = statistics.stdev(diffs)
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    lo, hi = out["mean"] - half, out["mean"] + half
    return out | {"std": sd, "ci95": (lo, hi), "distinguishable": lo > 0 or hi < 0}


def folder_of(shared: list, label: str, flags: str, trial: int, t_arch: str) -> str:
    opt = train_student.parse_option(shared + train_group.shlex.split(row_flags(label, flags, trial)))
    train_student.name_run(opt, t_arch)
    return opt.save_folder


def collect(shared, rows, trials, t_arch) -> dict:
    """{label: {trial: summary}} of the finished (or diverged) students."""
    out = {}
    for label, flags in rows:
        out[label] = {}
        for t in trials:
            path = os.path.join(folder_of(shared, label, flags, t, t_arch), "summary.json")
            if os.path.isfile(path):
                out[label][t] = json.load(open(path))
    return out


def fmt_ms(values) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(results: dict, rows, trials, reference: str, metric: str = "last_acc") -> tuple[str, dict]:
    ref = results[reference]
    lines = [f"| row | last top-1 (mean ± std) | best top-1 | per trial (last) | Δ vs {reference}: mean ± std "
             f"| 95% interval | distinguishable |", "|---|---|---|---|---|---|---|"]
    data, absent = {}, []
    for label, _ in rows:
        runs = results[label]
        if not runs and label != reference:
            absent.append(label)   # no trial of this row has finished: one line under the table, not a row of dashes
            continue
        ok = {t: s for t, s in runs.items() if s.get("status", "finished") == "finished" and s.get(metric) is not None}
        diverged = [t for t, s in runs.items() if s.get("status") == "diverged"]
        last = [ok[t][metric] for t in trials if t in ok]
        best = [ok[t]["best_acc"] for t in trials if t in ok]
        per = ", ".join(f"{ok[t][metric]:.2f}" if t in ok else ("div." if t in diverged else "-") for t in trials)
        common = [t for t in trials if t in ok and t in ref and ref[t].get(metric) is not None]
        rec = {"last": last, "best": best, "trials": [t for t in trials if t in ok], "diverged": diverged}
        if label == reference:
            lines.append(f"| **{label}** | {fmt_ms(last)} | {fmt_ms(best)} | {per} | (reference) | | |")
        else:
            d = paired([ok[t][metric] - ref[t][metric] for t in common])
            rec["paired"] = d | {"diffs": [ok[t][metric] - ref[t][metric] for t in common]}
            ci = d["ci95"]
            if d["n"] >= 2:
                cells = (f"{d['mean']:+.2f} ± {d['std']:.2f} (n={d['n']}) | [{ci[0]:+.2f}, {ci[1]:+.2f}] | "
                         f"{'**yes**' if d['distinguishable'] else 'no'}")
            elif d["n"] == 1:
                cells = f"{d['mean']:+.2f} (n=1) | no interval from one trial | -"
            else:
                cells = "no common trial | | -"
            lines.append(f"| {label} | {fmt_ms(last)} | {fmt_ms(best)} | {per} | {cells} |")
        data[label] = rec
    if absent:
        lines.append("")
        lines.append("Not run yet (no finished trial): " + ", ".join(absent) + ".")
    return "\n".join(lines), data


def parse(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    own, shared = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True, help="rows: 'label | train_student.py flags'")
    p.add_argument("--trials", default="1,2,3,4,5")
    p.add_argument("--reference", required=True, help="label of the row the differences are taken to")
    p.add_argument("--max_group", type=int, default=0, help="at most K students per process (0: all rows)")
    p.add_argument("--only", default=None, help="comma-separated labels to train (report: all rows)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--out", default=None, help="markdown (and .json beside it)")
    a = p.parse_args(own)
    a.trials = [int(t) for t in a.trials.split(",")]
    return a, shared


def main(argv=None):
    a, shared = parse(argv)
    rows = read_table(a.table)
    if a.reference not in [label for label, _ in rows]:
        raise ConfigError(f"--reference {a.reference!r} is not a row of {a.table}")
    base, _ = train_student.build_parser().parse_known_args(shared)
    _, t_arch, _ = train_student.make_teacher_model(train_student.parse_option(shared + ["--distill", "kd"]),
                                                    train_student.dataset.num_classes(base.dataset))
    todo = [r for r in rows if a.only is None or r[0] in a.only.split(",")]
    if not a.report_only:
        k = a.max_group or len(todo)
        for t in a.trials:
            for i in range(0, len(todo), k):
                chunk = todo[i:i + k]
                argv = shared + ["--data_seed", str(t), "--resume_all"]
                for label, flags in chunk:
                    argv += ["--student", row_flags(label, flags, t)]
                print(f"==> trial {t}: {', '.join(label for label, _ in chunk)}", flush=True)
                train_group.main(argv)
    results = collect(shared, rows, a.trials, t_arch)
    text, data = report(results, rows, a.trials, a.reference)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({"trials": a.trials, "reference": a.reference, "shared": shared, "rows": rows, "results": data},
                      f, indent=1)
    return data


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
