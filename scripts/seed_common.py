"""What the seed experiment scripts (scripts/seed_*.py) share.

Every run goes through the codebase's own entry points, ``train_teacher.main(argv)`` and
``train_student.main(argv)`` (same process), and its numbers are read back from the run folder the
script wrote (summary.json, metrics.jsonl): nothing here re-implements a model, a loss or a loop.

Scripts whose students form one table (seeds/000, seeds/004) train them as groups (``train_groups``):
one ``train_group.py`` group per trial against one teacher, trial t with ``--data_seed t`` and ``--seed t``
for every row, and report them paired (``paired_results``: scripts/paired_table.py's report).

``--smoke`` makes every run tiny (a few hundred training images, 1 epoch, small batch, 1 trial) for CI; it
reads the same dataset files as a full run, from ``--data_folder``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SMOKE_IMAGES = 200
SMOKE_BATCH = 32

_WHERE = {
    "mnist": "the four MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte, plain or .gz; http://yann.lecun.com/exdb/mnist/)",
    "fashionmnist": "the four Fashion-MNIST idx files (apt-get install dataset-fashion-mnist puts them in "
                    "/usr/share/datasets/fashion-mnist)",
    "cifar10": "cifar-10-batches-py/ (extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)",
}


class RunFailed(RuntimeError):
    pass


def add_common_args(p: argparse.ArgumentParser, *, dataset: str, save_name: str, native: str,
                    grouped: bool = False) -> None:
    """Flags every seed script shares. ``native`` is the seed's own dataset (the --dataset default);
    Fashion-MNIST, installable offline, runs the same protocol where the seed's dataset is not at hand.
    ``grouped``: the script trains its students as one group per trial (``--trials``, each trial seeding
    its rows) instead of one run each under ``--seed``."""
    p.add_argument("--dataset", default=native, choices=(native, "fashionmnist"),
                   help=f"the seed's {native}, or fashionmnist to run the same protocol on Fashion-MNIST")
    p.add_argument("--data_folder", default="./data", help=f"where the {dataset} files are")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--save_dir", default=os.path.join("save", "seeds", save_name),
                   help="root of this experiment's teachers/ and students/ run folders")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    if grouped:
        p.add_argument("--trials", default=None,
                       help="comma-separated trials, e.g. 1,2,3,4,5 (the default; 1 with --smoke): trial t trains "
                            "every student as one group with --data_seed t and --seed t")
    else:
        p.add_argument("--seed", type=int, default=0,
                       help="seed of every run: every student starts from the same initialisation")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny run for CI: {SMOKE_IMAGES} training images, 1 epoch, batch {SMOKE_BATCH}")
    p.add_argument("--train_subset", type=int, default=None,
                   help=f"train on N images (default: all; {SMOKE_IMAGES} with --smoke)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a run whose folder already holds summary.json instead of training it again, and "
                        "continue an unfinished " + ("teacher or student" if grouped else "train_teacher.py run")
                        + " from its last checkpoint")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (the in-memory loader needs none)")


def dataset_missing(name: str, data_folder: str) -> str | None:
    """One line saying where to put the dataset, or None when its files are there."""
    import dataset.cifar as cifar
    import dataset.mnist as mnist
    if name in ("mnist", "fashionmnist"):
        found = mnist.find_folder(name, data_folder)
    else:
        found = cifar.cifar_folder(name, data_folder)
    if found is not None:
        return None
    return (f"{name} is not in --data_folder {data_folder}: put {_WHERE[name]} there, point --data_folder at "
            "it, or pass --download")


def require_dataset(args, name: str) -> None:
    if args.download:
        return
    msg = dataset_missing(name, args.data_folder)
    if msg:
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def parse_trials(args) -> list:
    """``--trials`` as a list of distinct non-negative ints (default 1..5, or 1 with --smoke)."""
    from helper.errors import ConfigError
    if args.trials is None:
        return [1] if args.smoke else [1, 2, 3, 4, 5]
    try:
        trials = [int(t) for t in args.trials.split(",")]
    except ValueError:
        raise ConfigError(f"--trials {args.trials!r}: give comma-separated integers, e.g. 1,2,3,4,5") from None
    if len(set(trials)) != len(trials) or min(trials) < 0:
        raise ConfigError(f"--trials {args.trials!r}: the trials must be distinct non-negative integers")
    return trials


def common_flags(args, dataset: str, batch_size: int) -> list:
    """Flags every run of an experiment shares: data, device, save root, smoke sizes, and ``--seed`` in the
    scripts that have one (grouped scripts seed each trial's runs themselves)."""
    flags = ["--dataset", dataset, "--data_folder", args.data_folder, "--save_dir", args.save_dir,
             "--device", args.device, "--num_workers", str(args.num_workers),
             "--batch_size", str(SMOKE_BATCH if args.smoke else batch_size), "--print_freq", "1000000"]
    if getattr(args, "seed", None) is not None:
        flags += ["--seed", str(args.seed)]
    subset = args.train_subset if args.train_subset is not None else (SMOKE_IMAGES if args.smoke else 0)
    if subset:
        flags += ["--train_subset", str(subset)]
    if args.download:
        flags.append("--download")
    return flags


def epochs(args, n: int) -> str:
    return "1" if args.smoke else str(n)


# ---- running through the codebase's entry points -----------------------------------------------------

def _call(module, argv: list, what: str):
    print(f"\n==> {what}\n    {shlex.join(['python', module.__name__ + '.py'] + argv)}", flush=True)
    try:
        return module.main(argv)
    except SystemExit as e:  # run_main turns bad input into one line and exit code 2
        if e.code not in (None, 0):
            raise RunFailed(f"{what}: {module.__name__}.py exited with status {e.code} (its message is above)") \
                from None


def _parse(module, argv: list, what: str):
    from helper.errors import ConfigError
    try:
        return module.parse_option(argv)
    except ConfigError as e:
        raise RunFailed(f"{what}: {e}") from None


def read_run(folder: str) -> dict:
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    metrics = []
    path = os.path.join(folder, "metrics.jsonl")
    if os.path.exists(path):
        by_epoch = {}
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    by_epoch[rec["epoch"]] = rec
        metrics = [by_epoch[e] for e in sorted(by_epoch)]
    return {"folder": folder, "summary": summary, "metrics": metrics}


def train_vanilla(args, argv: list, what: str) -> dict:
    """train_teacher.main(argv) (a teacher, or a label-only student); returns its run record. With
    ``--reuse`` a finished run is read back and an unfinished one continues from its last checkpoint."""
    import train_teacher
    opt = _parse(train_teacher, argv, what)
    folder = opt.save_folder
    if not (args.reuse and os.path.exists(os.path.join(folder, "summary.json"))):
        last = os.path.join(folder, f"{opt.model}_last.pth")
        if args.reuse and os.path.isfile(last):
            argv = argv + ["--resume", last]
        _call(train_teacher, argv, what)
    run = read_run(folder)
    run["checkpoint"] = os.path.join(folder, f"{opt.model}_last.pth")
    return run


def train_distilled(args, argv: list, teacher_arch: str, what: str) -> dict:
    """train_student.main(argv); returns its run record (the folder named as train_student names it)."""
    import train_student
    opt = _parse(train_student, argv, what)
    train_student.name_run(opt, teacher_arch)
    folder = opt.save_folder
    if not (args.reuse and os.path.exists(os.path.join(folder, "summary.json"))):
        _call(train_student, argv, what)
    return read_run(folder)


class InitRecorder:
    """Records a checksum of the initial weights of every ``model_dict[name]`` built while active.

    The seeds compare methods from one student initialisation (seeds/004 prints the first conv's norm of
    two fresh students); this checks it on the real runs: train_teacher.py, train_student.py and every row
    of train_group.py build the student first in a random stream seeded by its ``--seed``, so runs with
    one seed must build their first ``name`` model with the same weights.
    """

    def __init__(self, name: str):
        self.name = name
        self.sums: list = []

    def __enter__(self):
        import torch

        from models import model_dict
        self._dict, self._orig = model_dict, model_dict[self.name]
        orig, sums = self._orig, self.sums

        def build(*a, **kw):
            model = orig(*a, **kw)
            h = 0
            with torch.no_grad():
                for t in model.state_dict().values():
                    h = zlib.crc32(t.detach().cpu().contiguous().numpy().tobytes(), h)
            sums.append(f"{h:08x}")
            return model

        model_dict[self.name] = build
        return self

    def __exit__(self, *exc):
        self._dict[self.name] = self._orig
        return False

    def take(self) -> str | None:
        """Checksum of the first such model built since the last call."""
        out = self.sums[0] if self.sums else None
        self.sums.clear()
        return out


# ---- a table of students as one group per trial ----------------------------------------------------------

def train_groups(args, rows: list, shared: list, model_s: str, trials: list) -> dict:
    """Train ``rows`` ([(label, train_student.py flags)]) as one train_group.py group per trial: trial t
    with ``--data_seed t`` and every row ``--seed t --trial <label>_t`` (scripts/paired_table.py's naming),
    so the rows of a trial see the same batches and start from the same initial weights. ``--reuse`` keeps
    finished students and continues unfinished ones (``--resume_all``).

    Returns ``{"runs": {label: {trial: run record}}, "inits": {trial: [checksum per row]}}``: the
    checksums of the initial students as the group built them (it builds every row, reused ones too)."""
    import paired_table
    import train_group
    runs, inits = {label: {} for label, _ in rows}, {}
    for t in trials:
        argv = shared + ["--data_seed", str(t)] + (["--resume_all"] if args.reuse else [])
        for label, flags in rows:
            argv += ["--student", paired_table.row_flags(label, flags, t)]
        with InitRecorder(model_s) as init:
            summaries = _call(train_group, argv, f"trial {t}: {', '.join(label for label, _ in rows)} (one group)")
        inits[t] = init.sums[-len(rows):]  # a teacher of the same architecture is built first
        t_arch = summaries[0]["model_t"]
        for label, flags in rows:
            runs[label][t] = read_run(paired_table.folder_of(shared, label, flags, t, t_arch))
    return {"runs": runs, "inits": inits}


def teacher_and_groups(args, rows: list, trials: list, teacher_argv: list, student_argv: list) -> tuple:
    """The seed's teacher (``--path_t``, or trained once as trial 0 with ``teacher_argv``), then its students
    as one group per trial (``student_argv`` after the shared model/epoch flags). Returns (train_groups'
    result, the teacher's test accuracy: its own run's, else the one the students' runs measured)."""
    if args.path_t:
        path_t, teacher_acc = args.path_t, None
    else:
        t = train_vanilla(args, ["--model", args.model_t, "--epochs", epochs(args, args.teacher_epochs),
                                 "--trial", "0", "--seed", "0"] + teacher_argv, "teacher")
        path_t, teacher_acc = t["checkpoint"], t["summary"]["last_acc"]
    shared = ["--path_t", path_t, "--model_t", args.model_t, "--model_s", args.model_s,
              "--epochs", epochs(args, args.epochs)] + student_argv
    trained = train_groups(args, rows, shared, args.model_s, trials)
    if teacher_acc is None:
        teacher_acc = next((r["summary"].get("teacher_acc") for per in trained["runs"].values()
                            for r in per.values() if r["summary"].get("teacher_acc") is not None), None)
    return trained, teacher_acc


def mean_curve(records: list) -> list:
    """Per-epoch test top-1 averaged over the runs that reached that epoch (diverged runs left out)."""
    curves = [[m["test_acc"] for m in r["metrics"]] for r in records
              if r["summary"].get("status", "finished") == "finished"]
    n = max((len(c) for c in curves), default=0)
    return [statistics.mean(c[e] for c in curves if len(c) > e) for e in range(n)]


def paired_results(trained: dict, rows: list, trials: list, reference: str) -> tuple[str, dict]:
    """The table of ``train_groups``' runs: scripts/paired_table.py's report (per row the last-epoch top-1
    mean +- std over trials, and its paired differences to ``reference`` with a 95% interval), the per-epoch
    curves averaged over trials, and each trial's initial-weight checksums. Returns (markdown, numbers)."""
    import paired_table
    runs, inits = trained["runs"], trained["inits"]
    summaries = {label: {t: r["summary"] for t, r in runs[label].items()} for label in runs}
    table, stats = paired_table.report(summaries, rows, trials, reference)
    curves = {label: mean_curve([runs[label][t] for t in trials]) for label, _ in rows}
    n_ep = max(len(c) for c in curves.values())
    curve_rows = [[label] + [fmt(a) for a in c] + [""] * (n_ep - len(c)) for label, c in curves.items()]
    same = {t: len(set(sums)) == 1 and len(sums) == len(rows) for t, sums in inits.items()}
    text = (f"Last-epoch test top-1 (%) over trials {', '.join(map(str, trials))}, and each row's paired "
            f"difference to {reference} (95% interval of the paired t, n - 1 degrees of freedom):\n\n{table}\n\n"
            f"Test top-1 (%) after each epoch, mean over the trials:\n\n"
            + markdown_table(["row"] + [f"epoch {e}" for e in range(1, n_ep + 1)], curve_rows)
            + "\nInitial student weights (checksum), per trial: "
            + "; ".join(f"trial {t}: {sums[0] if same[t] else 'DIFFER ' + ', '.join(sums)}" for t, sums in inits.items())
            + (" (every row of a trial from the same initialisation).\n" if all(same.values()) else
               "\nWARNING: the students of a trial did not all start from the same initial weights.\n"))
    data = {"trials": trials, "reference": reference, "same_init": all(same.values()),
            "inits": {str(t): sums for t, sums in inits.items()}, "rows": {}}
    for label, flags in rows:
        data["rows"][label] = stats[label] | {
            "flags": flags, "curve": curves[label],
            "runs": {str(t): {"folder": r["folder"], "status": r["summary"].get("status", "finished"),
                              "last_acc": r["summary"].get("last_acc"), "best_acc": r["summary"].get("best_acc"),
                              "test_acc": [m["test_acc"] for m in r["metrics"]]}
                     for t, r in runs[label].items()}}
    return text, data


# ---- results --------------------------------------------------------------------------------------

def fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(args, name: str, text: str, data: dict) -> None:
    """Print the table and save it (``<save_dir>/<name>.md``) with its numbers (``<name>.json``)."""
    os.makedirs(args.save_dir, exist_ok=True)
    print("\n" + text, flush=True)
    with open(os.path.join(args.save_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.save_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    print(f"(table saved to {os.path.join(args.save_dir, name + '.md')}, numbers to {name}.json)")


def main_guard(fn) -> None:
    """Run a seed script's main: bad input is one line and exit status 2, a failed run one line and 1."""
    from helper.errors import ConfigError
    try:
        fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
