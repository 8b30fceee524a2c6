"""Does every DDP run end cleanly? Repeats tiny 2-process runs of train_student.py and counts.

Each run trains 1 epoch on generated MNIST-format data (64 images; tests/fakedata.py) with gloo on
CPU, started by ``torchrun --nproc-per-node 2`` or by ``--multiprocessing-distributed --procs_per_node
2`` (mp.spawn), and is clean when it exits 0, its output has no ``terminate called``, no SIGABRT/SIGTERM
and no traceback, rank 0 printed ``epoch 1/1`` once, and its folder holds every expected file (the three
checkpoints, metrics.jsonl, summary.json, parameters.json, one TensorBoard events file) and no temporary
file. A run that ends any other way is a run that a cluster scheduler would mark failed. The ranks run
with PYTHONFAULTHANDLER set, so an aborted rank also prints its Python stacks (``--show`` prints them).

    python scripts/ddp_end_check.py                     # 20 torchrun + 20 mp.spawn runs
    python scripts/ddp_end_check.py --runs 3 --launchers torchrun --json out.json

Prints one line per run and the counts; exit code 0 only if every run was clean.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402

from fakedata import make_idx  # noqa: E402
from models import model_dict  # noqa: E402

TEACHER, STUDENT = "cnn_mnist_teacher", "cnn_mnist_student"
DISTILL = ["--distill", "cka_group", "-b", "1", "--cka_gather", "--cka_images", "32"]  # the run
BAD_WORDS = ("terminate called", "SIGABRT", "SIGTERM", "Traceback")
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(root: str) -> tuple[str, str]:
    """The data folder and a randomly initialised teacher saved where train_teacher.py would put it."""
    data = make_idx(os.path.join(root, "mnist"), n_train=64, n_test=32, seed=0)
    folder = os.path.join(root, "teachers", f"{TEACHER}_vanilla_mnist_trial_0")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    path = os.path.join(folder, f"{TEACHER}_best.pth")
    torch.save({"model": model_dict[TEACHER](num_classes=10).state_dict(), "arch": TEACHER, "epoch": 1}, path)
    return data, path


def command(launcher: str, data: str, teacher: str, save_dir: str) -> list[str]:
    port = str(free_port())
    args = ["train_student.py", "--path_t", teacher, "--model_s", STUDENT, "--dataset", "mnist", "--data_folder",
            data, "--batch_size", "16", "--num_workers", "0", "--print_freq", "0", "--save_freq", "1",
            "--epochs", "1", "--save_dir", save_dir] + DISTILL
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", port] + args
    return [sys.executable] + args + ["--multiprocessing-distributed", "--procs_per_node", "2",
                                      "--dist-url", f"tcp://127.0.0.1:{port}"]


def problems(returncode: int, out: str, err: str, save_dir: str) -> list[str]:
    """What is wrong with one finished run (empty: it ended cleanly and wrote everything)."""
    found = [] if returncode == 0 else [f"exit {returncode}"]
    found += [repr(w) for w in BAD_WORDS if w in out + err]
    if out.count("epoch 1/1 ") != 1:
        found.append(f"'epoch 1/1' printed {out.count('epoch 1/1 ')} times")
    folders = glob.glob(os.path.join(save_dir, "students", "models", "*"))
    if len(folders) != 1:
        return found + [f"{len(folders)} run folders"]
    names = set(os.listdir(folders[0]))
    want = {f"{STUDENT}_last.pth", f"{STUDENT}_best.pth", "ckpt_epoch_1.pth", "metrics.jsonl", "summary.json",
            "parameters.json"}
    found += [f"no {n}" for n in sorted(want - names)]
    found += [f"left {n}" for n in sorted(names) if n.startswith(".")]
    tb = os.path.join(save_dir, "students", "tensorboard", os.path.basename(folders[0]))
    events = glob.glob(os.path.join(tb, "events.out.tfevents.*"))
    if len(events) != 1 or not all(os.path.getsize(e) > 0 for e in events):
        found.append(f"{len(events)} events files")
    return found


def run_once(launcher: str, data: str, teacher: str, save_dir: str, timeout: float) -> tuple[list[str], float, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    t0 = time.time()
    try:
        p = subprocess.run(command(launcher, data, teacher, save_dir), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [f"timed out after {timeout:.0f}s"], time.time() - t0, ""
    took = time.time() - t0
    return problems(p.returncode, p.stdout, p.stderr, save_dir), took, p.stdout[-2000:] + p.stderr[-4000:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs per launcher")
    p.add_argument("--launchers", default="torchrun,spawn", help="comma-separated: torchrun, spawn")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as hung")
    p.add_argument("--json", default=None, help="also write the counts and each run's result here")
    p.add_argument("--show", action="store_true", help="print the output of every run that was not clean")
    opt = p.parse_args(argv)
    launchers = [x for x in opt.launchers.split(",") if x]
    if not launchers or set(launchers) - {"torchrun", "spawn"}:
        p.error(f"--launchers {opt.launchers!r}: give torchrun, spawn or both")
    report = {"torch": torch.__version__, "runs": opt.runs, "launchers": {}}
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="ddp_end_") as tmp:
        data, teacher = make_inputs(tmp)
        for launcher in launchers:
            results = []
            for i in range(opt.runs):
                bad, took, tail = run_once(launcher, data, teacher, os.path.join(tmp, f"{launcher}_{i}"), opt.timeout)
                results.append({"ok": not bad, "problems": bad, "seconds": round(took, 2)})
                print(f"{launcher} {i + 1}/{opt.runs}: {'clean' if not bad else '; '.join(bad)} ({took:.1f}s)",
                      flush=True)
                if bad and opt.show:
                    print(tail, flush=True)
            clean = sum(r["ok"] for r in results)
            report["launchers"][launcher] = {"clean": clean, "runs": len(results),
                                            "mean_seconds": round(sum(r["seconds"] for r in results) / len(results), 2),
                                            "results": results}
    report["seconds"] = round(time.time() - t_all, 1)
    for launcher, r in report["launchers"].items():
        print(f"{launcher}: {r['clean']}/{r['runs']} clean, {r['mean_seconds']:.1f}s per run")
    print(f"total {report['seconds']:.0f}s")
    if opt.json:
        with open(opt.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(r["clean"] == r["runs"] for r in report["launchers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
