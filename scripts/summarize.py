"""The paper-shaped results table from run folders, with the published numbers and both protocols beside ours.

    python scripts/summarize.py --save_dir ./save --dataset cifar100 --out results_cifar100.md

Reads ``<save_dir>/teachers/models/*/summary.json`` (vanilla runs: the Teacher and Student rows) and
``<save_dir>/students/models/*/summary.json`` (distilled students), with each folder's ``parameters.json``
(the run's options), falling back to ``metrics.jsonl`` for the accuracies when a summary lacks them. A
folder without summary.json is an unfinished run and is left out (counted in a note); a run whose summary
says ``"status": "diverged"`` (its loss became NaN/inf) is counted as diverged, never as a number. Rows are
methods, columns teacher -> student pairs; a cell is

    last-epoch mean ± std / best-epoch mean ± std   over the trials of that (method, weights, pair)

(std: sample standard deviation, ddof=1; RepDistiller's tables report the **last** epoch, the best
epoch selects on the test set). After '·' come the published numbers of every source that has the
method and pair (scripts/published.py); RepD (RepDistiller README), SemCKD and SimKD (their READMEs,
-c 1 -d 1) only beside rows run with their weights. Two last columns say whether the numbers are
comparable: our protocol (epochs, runs averaged, a strongly augmented second view, logit standardisation,
the DOT optimiser) and each source's (epochs, extra augmentation, runs averaged, best or last epoch).

A row is a method as its papers name it: the loop options make their own rows (KD, KD+LS, KD+DOT,
KD+CTKD, DKD+LS, ...). The same method under other weights, another --kd_mode, another --strong_aug, or a
trial tag (``--trial <tag>_<n>``: scripts/run_cka_group.sh's ablations, the seeds' mixup runs) is its own
row.
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
          "dkd": "DKD", "dist": "DIST", "mlkd": "MLKD", "ctkd": "KD+CTKD", "reviewkd": "ReviewKD", "ofd": "OFD",
          "rcka": "RCKA", "cosine": "Cosine", "cka_group": "CKA-group (ours)"}
ROW_ORDER = ["KD", "FitNet", "AT", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "NST", "KDSVD", "CRD",
             "CRD+KD", "SemCKD", "SRRL", "SimKD", "DKD", "DIST", "MLKD", "KD+CTKD", "ReviewKD", "OFD", "RCKA",
             "Cosine", "CKA-group (ours)"]
# loop options named as the papers name them, appended to the method's label
OPTION_SUFFIXES = (("+LS", lambda run: bool(option(run, "logit_stand", False))),
                   ("+DOT", lambda run: option(run, "optimizer", "sgd") == "dot"))


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
    """One finished or diverged run as a flat dict (its parameters.json under ``params``), or None if the
    folder holds neither."""
    summary = _read_json(os.path.join(folder, "summary.json"))
    if not isinstance(summary, dict):
        return None
    run = dict(summary)
    params = _read_json(os.path.join(folder, "parameters.json"))
    run["params"] = params if isinstance(params, dict) else {}
    run["variant"], run["trial_index"] = split_trial(run.get("trial", ""))
    run["folder"] = folder
    if diverged(run):
        return run
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
    return run


def option(run: dict, key: str, default=None):
    """A run's option: from its summary, else its parameters.json, else ``default``."""
    value = run.get(key, run.get("params", {}).get(key))
    return default if value is None else value


def diverged(run: dict) -> bool:
    return run.get("status") == "diverged"


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
    label += "".join(suffix for suffix, used in OPTION_SUFFIXES if used(run))
    mode = run.get("kd_mode") or "offline"
    if mode != "offline":
        label += f" ({mode})"
    return label


def _fmt_w(w: tuple) -> str:
    return " ".join(f"-{k} {v:g}" for k, v in zip("cdb", w))


VIEWS = {"none": "no extra aug", "randaugment": "+RandAugment view"}


def _view(run) -> str:
    return str(option(run, "strong_aug", "none"))


class Cell:
    """The runs of one (row, pair): statistics over the finished ones; diverged ones are only counted."""

    def __init__(self, runs: list, loaded: bool = False):
        self.runs = runs
        self.loaded = loaded  # a teacher not trained here: the test accuracy the distillation runs measured
        done = [r for r in runs if not diverged(r)]
        self.last = mean_std([float(r["last_acc"]) for r in done])
        self.best = mean_std([float(r["best_acc"]) for r in done])
        self.n, self.diverged = len(done), len(runs) - len(done)
        self.epochs = sorted({r.get("last_epoch") for r in done if r.get("last_epoch") is not None})


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
        groups[(method_label(r), _w(r), r["variant"], _view(r))].append(r)
    # a method label that appears with several weight settings (second views) gets them in the row name
    weights_per_label, views_per_label = defaultdict(set), defaultdict(set)
    for label, w, _, view in groups:
        weights_per_label[label].add(w)
        views_per_label[label].add(view)

    def order(key):
        label, w, variant, view = key
        base = re.sub(r"(\+LS|\+DOT)*( \((online|self)\))?$", "", label)
        i = ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER)
        return (i, len(label) - len(base), label, variant != "", variant, view, w)

    for key in sorted(groups, key=order):
        label, w, variant, view = key
        name = label
        if len(weights_per_label[label]) > 1:
            name += f" ({_fmt_w(w)})"
        if len(views_per_label[label]) > 1:
            name += f" ({VIEWS.get(view, '+' + view + ' view')})"
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


def _found(label_key, row_name: str, pair) -> list:
    """The published numbers for one cell (scripts/published.py's Found records)."""
    if label_key is None:  # Teacher / Student rows: every source
        return [] if " [" in row_name else published.lookup(row_name, pair[0], pair[1], None)
    label, w = label_key
    return published.lookup(label, pair[0], pair[1], w)


def _fmt_found(found: list) -> str:
    return "; ".join(f"{f.source} {f.mean:.2f}{'' if f.std is None else f'±{f.std:.2f}'}{'†' if f.recalled else ''}"
                     for f in found)


def our_protocol(cells: dict) -> str:
    """Epochs · second view · runs averaged per cell · which epoch, then LS and DOT when used."""
    runs = [r for c in cells.values() if not c.loaded for r in c.runs]
    if not runs:
        return "loaded teacher" if cells else ""
    epochs = sorted({int(e) for e in (option(r, "epochs", r.get("last_epoch")) for r in runs) if e is not None})
    views = sorted({VIEWS.get(_view(r), f"+{_view(r)} view") for r in runs})
    ns = sorted({c.n for c in cells.values() if not c.loaded and c.n})
    n = f"{ns[0]} run{'s' * (ns[0] != 1)}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} runs" if ns else "no finished run"
    parts = [("/".join(map(str, epochs)) or "?") + " ep", " / ".join(views), n, "last & best epoch"]
    parts += [suffix.lstrip("+") for suffix, used in OPTION_SUFFIXES if any(used(r) for r in runs)]
    return " · ".join(parts)


def render_markdown(table: dict, dataset: str, with_published: bool = True) -> str:
    pairs, rows = table["pairs"], table["rows"]
    ns = Counter(c.n for _, _, cells in rows for c in cells.values() if not c.loaded and c.n)
    usual_n = ns.most_common(1)[0][0] if ns else 0
    lines = [f"## {dataset}: top-1 accuracy (%)", "",
             "Each cell: **last-epoch** mean ± std / **best-epoch** mean ± std over trials "
             f"(sample std; {usual_n} trials unless a cell says n=...). RepDistiller's tables report the last "
             "epoch; best-epoch picks the epoch on the test set. A run whose loss became NaN/inf counts as "
             "diverged, not as a number.",
             ]
    if with_published:
        lines.append("After '·': published numbers (RepD, SemCKD and SimKD only beside rows run with their weights: "
                     "RepD -c 1 -d 0, KD -c 0.1 -d 0.9; SemCKD and SimKD -c 1 -d 1, SimKD itself -c 0 -d 0). "
                     "Protocols: epochs · augmentation beyond crop and flip · runs averaged · which epoch "
                     "(? = the source does not say). † = not read in a README (recalled or quoted from a paper).")
    head = ["method"] + [f"{t}→{s}" for t, s in pairs] + ["our protocol"] + (["published protocol"] * with_published)
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    mixed, sources = [], {}
    for name, key, cells in rows:
        out, protocols = [], {}
        for p in pairs:
            c = cells.get(p)
            text = "–"
            if c is not None and c.loaded:
                text = f"{_ms(c.last)} (loaded teacher, as evaluated by the student runs)"
            elif c is not None and c.n == 0:
                text = "diverged" + (f" (n={c.diverged})" if c.diverged > 1 else "")
            elif c is not None:
                text = f"{_ms(c.last)} / {_ms(c.best)}"
                if c.n != usual_n:
                    text += f" (n={c.n})"
                if c.diverged:
                    text += f" + {c.diverged} diverged"
                if len(c.epochs) > 1:
                    text += " *"
                    mixed.append(f"{name}, {p[0]}→{p[1]}: runs of {c.epochs} epochs")
            found = _found(key, name, p) if with_published else []
            for f in found:
                protocols.setdefault(f.source, f.protocol.text())
                sources.setdefault(f.source, set()).add(f.where)
            if found:
                text += f" · {_fmt_found(found)}"
            out.append(text)
        out.append(our_protocol(cells))
        if with_published:
            out.append("; ".join(f"{src}: {text}" for src, text in protocols.items()) or "–")
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    if sources:
        lines += ["", "Published numbers read from: " + "; ".join(
            f"{src} = {' and '.join(sorted(where))}" for src, where in sources.items()) + "."]
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
