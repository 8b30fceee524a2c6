"""The paper-shaped results table from run folders, with the published numbers beside ours.

    python scripts/summarize.py --save_dir ./save --dataset cifar100 --out results_cifar100.md

Reads ``<save_dir>/teachers/models/*/summary.json`` (vanilla runs: the Teacher and Student rows) and
``<save_dir>/students/models/*/summary.json`` (distilled students), falling back to ``metrics.jsonl``
for the accuracies when a summary lacks them. A folder without summary.json is an unfinished run and
is left out (counted in a note). Rows are methods, columns teacher -> student pairs; a cell is

    last-epoch mean ± std / best-epoch mean ± std   over the trials of that (method, weights, pair)

(std: sample standard deviation, ddof=1; RepDistiller's tables report the **last** epoch, the best
epoch selects on the test set). After '·' come the published numbers of every source whose protocol
ran this method with the same weights (scripts/published.py): RepD (RepDistiller README), SemCKD and
SimKD (their READMEs, -c 1 -d 1). The same method under other weights, another --kd_mode, or a trial
tag (``--trial <tag>_<n>``: scripts/run_cka_group.sh's ablations, the seeds' mixup runs) is its own row.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import published  # noqa: E402

# the 11 standard CIFAR-100 pairs (scripts/run_cifar_distill.sh), then the published tables' other pairs
STANDARD_PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                  ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
                  ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
                  ("wrn_40_2", "ShuffleV1"), ("vgg13", "MobileNetV2")]

LABELS = {"kd": "KD", "hint": "FitNet", "attention": "AT", "similarity": "SP", "correlation": "CC",
          "vid": "VID", "rkd": "RKD", "pkt": "PKT", "abound": "AB", "factor": "FT", "fsp": "FSP", "nst": "NST",
          "kdsvd": "KDSVD", "crd": "CRD", "semckd": "SemCKD", "srrl": "SRRL", "simkd": "SimKD",
          "cosine": "Cosine", "cka_group": "CKA-group (ours)"}
ROW_ORDER = ["KD", "FitNet", "AT", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "NST", "KDSVD", "CRD",
             "CRD+KD", "SemCKD", "SRRL", "SimKD", "Cosine", "CKA-group (ours)"]


# ---- reading run folders ----------------------------------------------------------------------------

def split_trial(trial) -> tuple:
    """'3' -> ('', '3'); 'mixup_0' -> ('mixup', '0'); 'grouping-uniform_2' -> ('grouping-uniform', '2')."""
    trial = str(trial)
    m = re.fullmatch(r"(.+)_(\d+)", trial)
    if m:
        return m.group(1), m.group(2)
    return ("", trial) if trial.isdigit() else (trial, "")


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_metrics(folder: str) -> list:
    """metrics.jsonl records, one per epoch (the last line of an epoch wins, as after a resume)."""
    path = os.path.join(folder, "metrics.jsonl")
    by_epoch = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "epoch" in rec and "test_acc" in rec:
                    by_epoch[int(rec["epoch"])] = rec
    except OSError:
        return []
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_run(folder: str) -> dict | None:
    """One finished run as a flat dict, or None if the folder holds no finished run."""
    summary = _read_json(os.path.join(folder, "summary.json"))
    if not isinstance(summary, dict):
        return None
    run = dict(summary)
    metrics = read_metrics(folder)
    if metrics:
        if run.get("best_acc") is None:
            best = max(metrics, key=lambda r: r["test_acc"])
            run["best_acc"], run["best_epoch"] = best["test_acc"], best["epoch"]
        if run.get("last_acc") is None:
            run["last_acc"], run["last_epoch"] = metrics[-1]["test_acc"], metrics[-1]["epoch"]
    if run.get("last_epoch") is None and metrics:
        run["last_epoch"] = metrics[-1]["epoch"]
    if run.get("best_acc") is None or run.get("last_acc") is None:
        return None
    run["folder"] = folder
    run["variant"], run["trial_index"] = split_trial(run.get("trial", ""))
    return run


def scan(save_dir: str, dataset: str | None = None) -> dict:
    """{'vanilla': [...], 'students': [...], 'unfinished': [folders]} for one dataset."""
    out = {"vanilla": [], "students": [], "unfinished": []}
    for kind, sub in (("vanilla", "teachers"), ("students", "students")):
        for folder in sorted(glob.glob(os.path.join(save_dir, sub, "models", "*"))):
            if not os.path.isdir(folder):
                continue
            run = read_run(folder)
            if run is None:
                out["unfinished"].append(folder)
                continue
            if kind == "vanilla" and "model" not in run:
                out["unfinished"].append(folder)
                continue
            if kind == "students" and not ("model_s" in run and "model_t" in run):
                out["unfinished"].append(folder)
                continue
            if dataset and run.get("dataset") not in (None, dataset):
                continue
            out[kind].append(run)
    return out


# ---- statistics and rows ----------------------------------------------------------------------------

def mean_std(values: list) -> tuple:
    """(mean, sample std with ddof=1 or None for a single value, n)."""
    n = len(values)
    if n == 0:
        return None, None, 0
    m = sum(values) / n
    if n == 1:
        return m, None, 1
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)), n


def _w(run) -> tuple:
    return tuple(round(float(run.get(k, 0.0) or 0.0), 10) for k in ("cls", "div", "beta"))


def method_label(run: dict) -> str:
    distill = run.get("distill")
    label = LABELS.get(distill, distill)
    if distill == "crd" and float(run.get("div", 0) or 0) > 0:
        label = "CRD+KD"
    mode = run.get("kd_mode") or "offline"
    if mode != "offline":
        label += f" ({mode})"
    return label


def _fmt_w(w: tuple) -> str:
    return " ".join(f"-{k} {v:g}" for k, v in zip("cdb", w))


class Cell:
    def __init__(self, runs: list, loaded: bool = False):
        self.runs = runs
        self.loaded = loaded  # a teacher not trained here: the test accuracy the distillation runs measured
        self.last = mean_std([float(r["last_acc"]) for r in runs])
        self.best = mean_std([float(r["best_acc"]) for r in runs])
        self.n = len(runs)
        self.epochs = sorted({r.get("last_epoch") for r in runs if r.get("last_epoch") is not None})


def build_table(scanned: dict, pairs: list | None = None) -> dict:
    """Rows (label, key, {pair: Cell}) in paper order, the columns and notes."""
    students = scanned["students"]
    vanilla = scanned["vanilla"]
    if pairs is None:
        seen = {(r["model_t"], r["model_s"]) for r in students}
        known = STANDARD_PAIRS + [p for s in published.SOURCES for p in published.pairs_of(s)]
        pairs = [p for p in dict.fromkeys(known) if p in seen] + sorted(seen - set(known))
        if not pairs:  # only vanilla runs: the standard pairs whose two models were trained
            models = {r["model"] for r in vanilla}
            pairs = [p for p in STANDARD_PAIRS if p[0] in models and p[1] in models]
    by_model = defaultdict(list)
    for r in vanilla:
        by_model[(r["model"], r["variant"])].append(r)
    rows = []
    teacher_cells = {p: Cell(by_model[(p[0], "")]) for p in pairs if by_model[(p[0], "")]}
    for p in pairs:  # a teacher trained elsewhere (e.g. RepDistiller's files): its accuracy as the students measured it
        measured = sorted({round(float(r["teacher_acc"]), 4) for r in students
                           if (r["model_t"], r["model_s"]) == p and r.get("teacher_acc") is not None
                           and (r.get("kd_mode") or "offline") == "offline"})
        if p not in teacher_cells and measured:
            teacher_cells[p] = Cell([{"last_acc": a, "best_acc": a} for a in measured], loaded=True)
    rows.append(("Teacher", None, teacher_cells))
    rows.append(("Student", None, {p: Cell(by_model[(p[1], "")]) for p in pairs if by_model[(p[1], "")]}))
    for variant in sorted({v for _, v in by_model if v}):
        cells = {p: Cell(by_model[(p[1], variant)]) for p in pairs if by_model[(p[1], variant)]}
        if cells:
            rows.append((f"Student [{variant}]", None, cells))

    groups = defaultdict(list)
    for r in students:
        groups[(method_label(r), _w(r), r["variant"])].append(r)
    # a method label that appears with several weight settings gets its weights in the row name
    weights_per_label = defaultdict(set)
    for label, w, _ in groups:
        weights_per_label[label].add(w)

    def order(key):
        label, w, variant = key
        base = re.sub(r" \((online|self)\)$", "", label)
        i = ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER)
        return (i, label, variant != "", variant, w)

    for key in sorted(groups, key=order):
        label, w, variant = key
        name = label
        if len(weights_per_label[label]) > 1:
            name += f" ({_fmt_w(w)})"
        if variant:
            name += f" [{variant}]"
        cells = defaultdict(list)
        for r in groups[key]:
            cells[(r["model_t"], r["model_s"])].append(r)
        rows.append((name, (label, w), {p: Cell(v) for p, v in cells.items() if p in pairs}))
    return {"pairs": pairs, "rows": rows, "unfinished": scanned["unfinished"]}


# ---- markdown ---------------------------------------------------------------------------------------

def _ms(stat) -> str:
    m, s, _ = stat
    return f"{m:.2f}" if s is None else f"{m:.2f}±{s:.2f}"


def _published(label_key, row_name: str, pair) -> str:
    if label_key is None:  # Teacher / Student rows: every source
        label = row_name.split(" [")[0]
        if label != row_name:
            return ""
        found = published.lookup(label, pair[0], pair[1], None)
    else:
        label, w = label_key
        found = published.lookup(label, pair[0], pair[1], w)
    parts = []
    for short, mean, std, recalled in found:
        v = f"{mean:.2f}" if std is None else f"{mean:.2f}±{std:.2f}"
        parts.append(f"{short} {v}{'†' if recalled else ''}")
    return "; ".join(parts)


def render_markdown(table: dict, dataset: str, with_published: bool = True) -> str:
    pairs, rows = table["pairs"], table["rows"]
    ns = Counter(c.n for _, _, cells in rows for c in cells.values() if not c.loaded)
    usual_n = ns.most_common(1)[0][0] if ns else 0
    lines = [f"## {dataset}: top-1 accuracy (%)", "",
             "Each cell: **last-epoch** mean ± std / **best-epoch** mean ± std over trials "
             f"(sample std; {usual_n} trials unless a cell says n=...). RepDistiller's tables report the last "
             "epoch; best-epoch picks the epoch on the test set.",
             ]
    if with_published:
        lines.append("After '·': published numbers for rows run with that source's weights: RepD = RepDistiller "
                     "README (last epoch; -c 1 -d 0, KD -c 0.1 -d 0.9), SemCKD / SimKD = their READMEs "
                     "(-c 1 -d 1; SimKD -c 0 -d 0). † = recalled from the CRD paper, not verified.")
    lines += ["", "| method | " + " | ".join(f"{t}→{s}" for t, s in pairs) + " |",
              "|---|" + "---|" * len(pairs)]
    mixed = []
    for name, key, cells in rows:
        out = []
        for p in pairs:
            c = cells.get(p)
            text = "–"
            if c is not None and c.loaded:
                text = f"{_ms(c.last)} (loaded teacher, as evaluated by the student runs)"
            elif c is not None:
                text = f"{_ms(c.last)} / {_ms(c.best)}"
                if c.n != usual_n:
                    text += f" (n={c.n})"
                if len(c.epochs) > 1:
                    text += " *"
                    mixed.append(f"{name}, {p[0]}→{p[1]}: runs of {c.epochs} epochs")
            pub = _published(key, name, p) if with_published else ""
            if pub:
                text += f" · {pub}"
            out.append(text)
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    if mixed:
        lines += ["", "\\* cells that average runs of different lengths: " + "; ".join(mixed)]
    if table["unfinished"]:
        lines += ["", f"{len(table['unfinished'])} run folder(s) without a finished summary.json were left out."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save_dir", default="./save", help="root holding teachers/models and students/models")
    p.add_argument("--dataset", default="cifar100", help="only runs on this dataset")
    p.add_argument("--pairs", default=None,
                   help="columns, comma-separated teacher:student (default: every pair with distilled runs)")
    p.add_argument("--no_published", action="store_true", help="leave the published numbers out")
    p.add_argument("--out", default=None, help="write the markdown here as well as to stdout")
    args = p.parse_args(argv)
    if not os.path.isdir(args.save_dir):
        print(f"error: --save_dir {args.save_dir!r} is not a folder; point it at the runs' save root "
              "(the one holding teachers/ and students/)", file=sys.stderr)
        return 2
    pairs = None
    if args.pairs:
        try:
            pairs = [tuple(x.split(":")) for x in args.pairs.split(",") if x.strip()]
            assert all(len(x) == 2 for x in pairs)
        except AssertionError:
            print(f"error: --pairs {args.pairs!r}: write teacher:student,teacher:student", file=sys.stderr)
            return 2
    table = build_table(scan(args.save_dir, args.dataset), pairs)
    if not any(cells for _, _, cells in table["rows"]):
        print(f"error: no finished runs on {args.dataset} under {args.save_dir}", file=sys.stderr)
        return 1
    text = render_markdown(table, args.dataset, not args.no_published)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
