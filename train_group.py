"""Train a whole table's students against one teacher in one process: one teacher forward per batch,
every student on the same batches (paired), each exactly the experiment its own train_student.py run is.

    python train_group.py --path_t save/teachers/models/resnet32x4_vanilla_cifar100_trial_0/resnet32x4_best.pth \
        --model_s resnet8x4 --dataset cifar100 --trial 0 \
        --student "--distill kd -c 0.1 -d 0.9" \
        --student "--distill crd -c 1 -d 0 -b 0.8" \
        --student "--distill cka_group -c 1 -d 1 -b 1" \
        --student "--distill cka_group -c 1 -d 1 -b 1 --cka_grouping uniform --trial uniform_0 --seed 0"

Every flag outside ``--student`` is train_student.py's and is shared by all rows; each ``--student "..."``
row adds or overrides train_student.py flags for one student (its method, weights, method flags, student
architecture, ``--trial``/``--seed``, optimiser, learning rate). ``--students FILE`` reads rows from a file
(one per line, ``#`` comments). What every student of a process must share (the data stream, the teacher,
the epochs, the speed paths, the launcher: ``train_student.GROUP_KEYS``) is refused with one line when a
row changes it.

Pairing. The data stream (subset, order, augmentation, mixup, CRD's dataset-side negatives) has its own
seed, ``--data_seed`` (default: the seed of the shared ``--trial``/``--seed``); each student draws its
initialisation and every random number of its training from its own stream seeded by its ``--seed`` (from
its ``--trial``). A student trained here is therefore bitwise the run ``train_student.py <shared flags>
<row> --data_seed D`` would make (plus ``--drop_last`` when another student needs full batches); that
command is recorded as ``separate_command`` in its parameters.json, and it writes exactly what that run
writes, in the same folder. Rows that would share a folder (same method and weights, e.g. two groupings of
cka_group) need distinct ``--trial`` names; keep ``--seed`` equal to pair their initialisations.

A student whose loss diverges stops alone (one line, ``"status": "diverged"`` in its summary.json); a row
that cannot be built stops the group before any training. ``--resume_all`` continues every student from
its folder's ``<model>_last.pth`` (finished students are kept as they are). Runs under torchrun and
``--multiprocessing-distributed`` as train_student.py does.
"""
from __future__ import annotations

import argparse
import os
import shlex

import train_student
from distiller_zoo import get_distiller_class
from helper import distributed as dist_util
from helper.engine import run_main
from helper.errors import ConfigError
from helper.util import seed_from_trial


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="train several students against one teacher, paired "
                                            "(all other flags: train_student.py's, shared by every row)")
    p.add_argument("--student", action="append", default=[], metavar='"FLAGS"',
                   help="one student: train_student.py flags for this row (repeat for each student)")
    p.add_argument("--students", default=None, metavar="FILE", help="rows from a file, one per line, # comments")
    p.add_argument("--resume_all", action="store_true",
                   help="continue every student from <its folder>/<model>_last.pth when it exists")
    return p


def read_rows(path: str) -> list:
    if not os.path.isfile(path):
        raise ConfigError(f"--students {path!r}: no such file")
    with open(path) as f:
        return [ln.split("#", 1)[0].strip() for ln in f if ln.split("#", 1)[0].strip()]


def parse_group(argv=None) -> list:
    """The option sets of the group's students, checked to be one group."""
    g, shared = build_parser().parse_known_args(argv)
    rows = list(g.student) + (read_rows(g.students) if g.students else [])
    if not rows:
        raise ConfigError('no students: give one --student "<train_student.py flags>" per row (or --students FILE)')
    base, _ = train_student.build_parser().parse_known_args(shared)
    data_seed = base.data_seed if base.data_seed is not None else (
        base.seed if base.seed is not None else seed_from_trial(base.trial))
    opts = []
    for i, row in enumerate(rows):
        try:
            tokens = shlex.split(row)
        except ValueError as e:
            raise ConfigError(f"--student {row!r}: {e}") from None
        if "--data_seed" in tokens or "--resume" in tokens:
            raise ConfigError(f"--student {row!r}: --data_seed and --resume are the group's (the whole group "
                              "shares one data stream; use --resume_all)")
        argv_i = shared + tokens + ["--data_seed", str(data_seed)]
        try:
            opt = train_student.parse_option(argv_i)
        except ConfigError as e:
            raise ConfigError(f"student {i + 1} ({row}): {e}") from None
        except SystemExit:  # argparse already printed the row's bad flag
            raise ConfigError(f"student {i + 1}: cannot parse {row!r} (see the message above)") from None
        opt.row = row
        opt.separate_command = shlex.join(["python", "train_student.py"] + shared + tokens
                                          + ["--data_seed", str(data_seed)])
        opt.resume_all = g.resume_all
        opts.append(opt)
    for key in train_student.GROUP_KEYS:
        values = [getattr(o, key, None) for o in opts]
        if any(v != values[0] for v in values):
            odd = next(i for i, v in enumerate(values) if v != values[0])
            raise ConfigError(f"--{key} differs between students 1 ({values[0]!r}) and {odd + 1} ({values[odd]!r}): "
                              "it belongs to the whole group; give it once, outside --student")
    if len(opts) > 1 and opts[0].kd_mode != "offline":
        raise ConfigError("a group trains against one frozen teacher: --kd_mode must be offline")
    if any(get_distiller_class(o.distill).drop_last for o in opts):
        for o in opts:
            if not get_distiller_class(o.distill).drop_last and "--drop_last" not in o.separate_command:
                o.separate_command += " --drop_last"
    return opts


class Group:
    """The students' option sets, carried by the first one through the launcher (mp.spawn pickles it)."""

    def __init__(self, opts):
        self.opts = opts


def group_worker(opt, local_rank=None):
    device = dist_util.init(opt, local_rank)
    opts = opt.group.opts
    for o in opts[1:]:
        o.rank, o.world_size, o.local_rank, o.distributed = opt.rank, opt.world_size, opt.local_rank, opt.distributed
    return train_student.train_students(opts, device)


def main(argv=None):
    """Run from the command line or from Python; returns the students' summaries (single process)."""
    def parse():
        opts = parse_group(argv)
        opts[0].group = Group(opts)
        return opts[0]

    return run_main(group_worker, parse)


if __name__ == "__main__":
    main()
