"""DDP on CPU with gloo: the two launchers, rank-0-only outputs, resume, error propagation, and equivalence.

* Equivalence: 2 processes x batch 8 and 1 process x batch 16 reach the same weights (and log the same
  metrics) when the single process sees, batch by batch, the union of what the two ranks'
  DistributedSamplers draw (rank order), for kd, crd, cka_group --cka_gather, dkd --logit_stand, ctkd and
  kd --optimizer dot on kink-free twins of the BatchNorm-free seeds/000 CNNs (see SmoothCNN). The ranks of
  every 2-process run end with bitwise identical parameters, also for hint (an init stage; its regressor has
  BatchNorm), simkd -c 0 -d 0 (the student's classifier is unused), reviewkd, ofd, rcka, dist and mlkd
  (per-process batch statistics), on the real models.
* torchrun runs of train_teacher.py and train_student.py write one checkpoint set, one TensorBoard events
  file, no ``module.`` keys, and resume under torchrun; an mp.spawn run (--multiprocessing-distributed
  --procs_per_node 2) does the same.
* An exception on rank 1 (the KD_TEST_FAIL_AT hook of helper/engine.py) ends every rank, with its
  message, under torchrun and under mp.spawn.
* A finished rank ends in order (helper.distributed.cleanup): its process group and the group's threads
  are gone before interpreter shutdown; scripts/ddp_end_check.py repeats whole runs of both launchers.

Each multi-process launch costs a few seconds of interpreter start-up; the file keeps them few.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time
import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import dataset
import train_group
import train_student
import train_teacher
from dataset.base import default_train_sampler
from fakedata import make_idx
from helper import distributed as dist_util
from helper.checkpoint import load_file
from helper.engine import FAIL_AT_ENV, _run_worker, wrap_ddp
from models import model_dict
from models.small import MnistCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ddp_end_check  # noqa: E402
N_TRAIN, N_TEST, GLOBAL_BATCH = 64, 32, 16
SEP = ":" if os.name != "nt" else "~"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny MNIST-format folder and two randomly initialised teachers saved as train_teacher.py would."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_idx(str(root / "mnist"), n_train=N_TRAIN, n_test=N_TEST, seed=0)
    teachers = {arch: save_teacher(root, arch) for arch in ("cnn_mnist_teacher", "resnet14")}
    return {"data": data, "teachers": teachers, "root": root}


def base_args(files, save_dir):
    return ["--dataset", "mnist", "--data_folder", files["data"], "--batch_size", str(GLOBAL_BATCH),
            "--num_workers", "0", "--print_freq", "0", "--save_dir", str(save_dir)]


# --------------------------------------------------------------------------------------- equivalence

class UnionOfRanks(torch.utils.data.Sampler):
    """One process's order that reproduces W ranks: their DistributedSamplers' draws, batch by batch,
    concatenated in rank order, so its global batch i is the union of the ranks' local batches i."""

    def __init__(self, n, seed, world, local_batch, drop_last):
        self.parts = [default_train_sampler(n, seed, r, world, drop_last) for r in range(world)]
        self.local_batch = local_batch

    def set_epoch(self, epoch):
        for s in self.parts:
            s.set_epoch(epoch)

    def __iter__(self):
        draws = [list(s) for s in self.parts]
        for i in range(0, len(draws[0]), self.local_batch):
            for d in draws:
                yield from d[i:i + self.local_batch]

    def __len__(self):
        return sum(len(s) for s in self.parts)


class _SiLU(nn.ReLU):  # a subclass, so that MnistCNN's stage and layer lookups still find it
    def forward(self, x):
        return F.silu(x)


class _AvgPool(nn.MaxPool2d):
    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size)


class SmoothCNN(MnistCNN):
    """The seeds/000 CNN with SiLU for ReLU and average for max pooling: the same layout, features,
    layers and initial weights, but no kink.

    Why the equivalence test needs it: 2 x 8 and 1 x 16 legitimately differ by float rounding (GEMM
    blocking of a batch of 8 vs 16, the gradient all-reduce: ~1e-7 relative). On the ReLU/max-pool
    CNNs such a difference now and then puts a unit on the other side of a kink, and the trajectories
    then part: in crd's 4th step one ReLU input (|x| = 2.8e-7) changed sign and one max-pool window
    (gap 8e-8) its argmax, the gradient changed by 4e-4 (relative), and after 8 steps the weights
    were 3.6e-3 apart and the logged crd loss 7e-5 (cka_group: 3.5e-4 from its 7th step). The twins
    keep the same code paths (DDP, CRD's gathered negatives/Z/banks, --cka_gather, metric reductions)
    and agree to 2e-6 after 8 steps, so the tolerances below can stay tight."""

    def __init__(self, plan, hidden, num_classes=10):
        super().__init__(plan, hidden, num_classes)
        for i, m in enumerate(self.features):
            if isinstance(m, nn.ReLU):
                self.features[i] = _SiLU()
            elif isinstance(m, nn.MaxPool2d):
                self.features[i] = _AvgPool(m.kernel_size)

    def forward(self, x, is_feat=False, preact=False):
        feats = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self._feat_idx:
                feats.append(x)
        x = self.tap_hidden(F.silu(self.fc1(x.flatten(1))))
        feats.append(x)
        return (feats, self.fc2(x)) if is_feat else self.fc2(x)


SMOOTH = {"smooth_cnn_teacher": lambda num_classes=10: SmoothCNN([32, 64, "M", 128, "M"], 512, num_classes),
          "smooth_cnn_student": lambda num_classes=10: SmoothCNN([16, "M", 32, "M"], 128, num_classes)}


def save_teacher(root, arch) -> str:
    """A randomly initialised teacher saved as train_teacher.py would (its folder names the arch)."""
    torch.manual_seed(0)
    folder = root / "teachers" / f"{arch}_vanilla_mnist_trial_0"
    folder.mkdir(parents=True)
    path = str(folder / f"{arch}_best.pth")
    torch.save({"model": model_dict[arch](num_classes=10).state_dict(), "arch": arch, "epoch": 1}, path)
    return path


EQUIVALENT = {  # method -> arguments; the teacher is SmoothCNN's big twin, the student its small one
    "kd": ["--distill", "kd", "-c", "1", "-d", "1"],
    "crd": ["--distill", "crd", "-c", "1", "-d", "0", "-b", "0.8", "--nce_k", "16", "--feat_dim", "16"],
    "cka_group": ["--distill", "cka_group", "-c", "1", "-d", "1", "-b", "1", "--cka_gather", "--cka_images", "32"],
    "dkd": ["--distill", "dkd", "-c", "1", "-d", "0", "-b", "1", "--logit_stand"],
    "ctkd": ["--distill", "ctkd", "-c", "0.1", "-d", "0.9", "--ctkd_loops", "2"],   # its temperature: DDP-reduced
    "kd_dot": ["--distill", "kd", "-c", "1", "-d", "1", "--optimizer", "dot"],     # DOT's own all-reduce
}
# with BatchNorm (per-rank batch statistics) the ranks need only agree with each other: hint's init stage
# (its regressor has BatchNorm), simkd -c 0 -d 0 (the student's classifier is never used), reviewkd's ABFs
# and ofd's connectors; rcka, dist and mlkd are statistics of each process's batch (rcka's sample relations,
# DIST's intra-class correlation, MLKD's batch/class matrices and median masks), as in their own DDP code
RANKS_ONLY = {"hint": ["--distill", "hint", "-c", "1", "-d", "0", "-b", "1", "--init_epochs", "1"],
              "simkd": ["--distill", "simkd", "-c", "0", "-d", "0", "-b", "1"],
              "reviewkd": ["--distill", "reviewkd", "-c", "1", "-d", "0", "-b", "5"],
              "ofd": ["--distill", "ofd", "-c", "1", "-d", "0", "-b", "0.001"],
              "rcka": ["--distill", "rcka", "-c", "1", "-d", "0", "-b", "15"],
              "dist": ["--distill", "dist", "-c", "1", "-d", "0", "-b", "2"],
              "mlkd": ["--distill", "mlkd", "-c", "0.1", "-d", "0", "-b", "0.9"]}
RESNET_PAIR = {"simkd", "ofd"}  # resnet14 -> resnet8: simkd's projector, ofd's BatchNorm-before-ReLU teacher


def method_argv(files, save_dir, name):
    if name in RESNET_PAIR:
        pair = ["--path_t", files["teachers"]["resnet14"], "--model_s", "resnet8"] + RANKS_ONLY[name]
    elif name in RANKS_ONLY:
        pair = ["--path_t", files["teachers"]["cnn_mnist_teacher"], "--model_s", "cnn_mnist_student"] + RANKS_ONLY[name]
    else:
        pair = ["--path_t", files["teachers"]["smooth_cnn_teacher"], "--model_s", "smooth_cnn_student"] + EQUIVALENT[name]
    # the torch loader augments each sample from (seed, epoch, index): the same in both set-ups
    return base_args(files, save_dir) + pair + ["--loader", "torch", "--epochs", "2", "--skip-validation",
                                                "--save_freq", "0"]


def run_student_in_process(argv, local_rank=None, union_of=None):
    """train_student.main_worker in this process; returns the trained student + distiller tensors.
    ``union_of=W``: a single process reading UnionOfRanks(W) instead of its default sampler."""
    opt = train_student.parse_option(argv)
    captured = {}
    real_fit, real_loaders = train_student.fit, dataset.get_dataloaders

    def fit(runs, *args, **kw):
        out = real_fit(runs, *args, **kw)
        captured.update({k: v.detach().clone() for k, v in runs[0].inner.state_dict().items() if torch.is_tensor(v)})
        return out

    def loaders(opt_, input_shape=None, **kw):
        kw["train_sampler"] = UnionOfRanks(N_TRAIN, opt_.seed, union_of, opt_.batch_size // union_of,
                                           opt_.drop_last)
        return real_loaders(opt_, input_shape, **kw)

    train_student.fit = fit
    if union_of:
        dataset.get_dataloaders = loaders
    try:
        train_student.main_worker(opt, local_rank)
    finally:
        train_student.fit, dataset.get_dataloaders = real_fit, real_loaders
    return captured


def _ddp_worker(local_rank, port, runs, out_dir):
    torch.set_num_threads(1)
    model_dict.update(SMOOTH)  # a fresh interpreter: the parent's registration is not inherited
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=2)
    for name, argv in runs:  # main_worker joins the existing group
        state = run_student_in_process(argv, local_rank)
        torch.save(state, os.path.join(out_dir, f"{name}_rank{local_rank}.pt"))
    dist_util.cleanup()  # the ordered end of the scripts' launchers (an error instead ends the process)


def max_diff(a: dict, b: dict, skip_bn_stats: bool = False) -> float:
    """Largest difference over the tensors of two state_dicts, ``|a - b| / max(1, |b|)``: absolute for
    weights, relative for large values such as CRD's normaliser Z (2e4 to 5e4 here, where one float32
    step is 2e-3 to 4e-3). ``skip_bn_stats``: leave out BatchNorm running statistics, which each rank
    updates from its own batch (DDP re-broadcasts rank 0's at the next forward; rank 0's are saved)."""
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].numel() and not (skip_bn_stats and k.endswith(("running_mean", "running_var")))]
    return max(float(((a[k].double() - b[k].double()).abs() / b[k].double().abs().clamp(min=1.0)).max())
               for k in keys)


def metrics_of(save_dir):
    (path,) = glob.glob(os.path.join(save_dir, "students", "models", "*", "metrics.jsonl"))
    return [json.loads(line) for line in open(path)]


def test_two_ranks_match_one_process_on_the_union_of_their_batches(files, tmp_path, monkeypatch):
    for arch, build in SMOOTH.items():
        monkeypatch.setitem(model_dict, arch, build)
    teachers = dict(files["teachers"], smooth_cnn_teacher=save_teacher(tmp_path, "smooth_cnn_teacher"))
    files = dict(files, teachers=teachers)
    names = list(EQUIVALENT) + list(RANKS_ONLY)
    runs = [(n, method_argv(files, tmp_path / f"ddp_{n}", n)) for n in names]
    mp.spawn(_ddp_worker, args=(free_port(), runs, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    report = {}
    for name in names:
        r0 = torch.load(tmp_path / f"{name}_rank0.pt")
        r1 = torch.load(tmp_path / f"{name}_rank1.pt")
        assert max_diff(r0, r1, skip_bn_stats=True) == 0.0, f"{name}: the ranks diverged"
        if name in EQUIVALENT:
            single = run_student_in_process(method_argv(files, tmp_path / f"one_{name}", name), union_of=2)
            torch.manual_seed(1)  # --trial 1: the student is the first thing built after set_seed
            start = model_dict["smooth_cnn_student"](num_classes=10).state_dict()
            moved = max(float((r0[f"student.{k}"] - v).abs().max()) for k, v in start.items())
            assert moved > 1e-3, f"{name}: the student did not train"
            report[name] = max_diff(r0, single)
            # the logged metrics are global: train metrics all-reduced, validation on exact shards
            two, one = (metrics_of(tmp_path / f"{kind}_{name}") for kind in ("ddp", "one"))
            assert len(two) == len(one) == 2
            for a, b in zip(two, one):
                for k in ("train_acc", "test_acc", "train_loss", "test_loss", "loss_cls", "loss_div", "loss_kd"):
                    assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (name, k, a[k], b[k])
    print("max |w(2 x 8) - w(1 x 16)|:", {k: f"{v:.1e}" for k, v in report.items()})
    for name, d in report.items():
        assert d < 2e-5, f"{name}: 2 x 8 differs from 1 x 16 by {d}"


# ----------------------------------------------------------------------------------------- launchers

class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def launch(args, *, torchrun: bool, capfd=None, env_extra=None, timeout=240):
    """``torchrun --nproc-per-node 2 <script> args`` in a subprocess, or the script's ``main(args +
    --multiprocessing-distributed --procs_per_node 2)`` in this process (mp.spawn's two children are then
    the only new interpreters). Returns (result, seconds)."""
    port = free_port()
    t0 = time.time()
    if torchrun:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}, **(env_extra or {}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(port)] + args
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr), time.time() - t0
    script = {"train_student.py": train_student, "train_teacher.py": train_teacher, "train_group.py": train_group}[args[0]]
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", *(env_extra or {}))}
    os.environ.update({"OMP_NUM_THREADS": "1"}, **(env_extra or {}))  # inherited by the spawned children
    capfd.readouterr()
    try:
        script.main(args[1:] + ["--multiprocessing-distributed", "--procs_per_node", "2",
                                "--dist-url", f"tcp://127.0.0.1:{port}"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capfd.readouterr()
    return Result(code, out.out, out.err), time.time() - t0


def check_run_folder(folder, tb_folder, prefix, epochs, n_events):
    names = sorted(os.listdir(folder))
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left
    for name in (f"{prefix}_last.pth", f"{prefix}_best.pth", "metrics.jsonl", "summary.json", "parameters.json") \
            + tuple(f"ckpt_epoch_{e}.pth" for e in epochs):
        assert name in names, (name, names)
    ckpt = load_file(os.path.join(folder, f"{prefix}_last.pth"))
    assert ckpt["epoch"] == epochs[-1]
    assert not any(k.startswith("module.") for k in ckpt["model"]), list(ckpt["model"])[:3]
    model_dict[ckpt["arch"]](num_classes=10).load_state_dict(ckpt["model"])
    lines = [json.loads(x) for x in open(os.path.join(folder, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == list(epochs)  # one line per epoch: only rank 0 wrote
    assert json.load(open(os.path.join(folder, "summary.json")))["last_epoch"] == epochs[-1]
    assert json.load(open(os.path.join(folder, "parameters.json")))["world_size"] == 2
    events = glob.glob(os.path.join(tb_folder, "events.out.tfevents.*"))
    assert len(events) == n_events, events  # one writer per run: rank 0's
    return ckpt


def assert_ok(p, printed_once):
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for text in printed_once:
        assert p.stdout.count(text) == 1, p.stdout  # only rank 0 prints


def test_torchrun_teacher_writes_once_and_resumes(files, tmp_path):
    # --download with the files present downloads nothing but runs the ranks one after another (main_first)
    args = ["train_teacher.py", "--model", "cnn_mnist_student", "--save_freq", "1", "--download"] + base_args(files, tmp_path)
    name = "cnn_mnist_student_vanilla_mnist_trial_0"
    folder = os.path.join(tmp_path, "teachers", "models", name)
    tb = os.path.join(tmp_path, "teachers", "tensorboard", name)
    p, _ = launch(args + ["--epochs", "1"], torchrun=True)
    assert_ok(p, ["epoch 1/1 ", "world size 2"])
    check_run_folder(folder, tb, "cnn_mnist_student", [1], n_events=1)
    p, _ = launch(args + ["--epochs", "2", "--resume", os.path.join(folder, "cnn_mnist_student_last.pth")],
                  torchrun=True)
    assert_ok(p, ["resumed from", "epoch 2/2 "])
    assert "epoch 1/2 " not in p.stdout
    check_run_folder(folder, tb, "cnn_mnist_student", [1, 2], n_events=2)


def student_args(files, save_dir, distill_args):
    return (["train_student.py", "--path_t", files["teachers"]["cnn_mnist_teacher"], "--model_s", "cnn_mnist_student",
             "--save_freq", "1"] + base_args(files, save_dir) + distill_args)


def student_folders(save_dir, distill, cls, div, beta):
    name = SEP.join(["S", f"cnn_mnist_student_T", f"cnn_mnist_teacher_mnist_{distill}_r", f"{cls}_a",
                     f"{div}_b", f"{beta}_1"])
    return (os.path.join(save_dir, "students", "models", name), os.path.join(save_dir, "students", "tensorboard", name))


def test_torchrun_student_writes_once_and_resumes(files, tmp_path):
    args = student_args(files, tmp_path, ["--distill", "cka_group", "-b", "1", "--cka_gather", "--cka_images", "32"])
    folder, tb = student_folders(tmp_path, "cka_group", 1.0, 1.0, 1.0)
    p, _ = launch(args + ["--epochs", "1"], torchrun=True)
    assert_ok(p, ["epoch 1/1 ", "cka_group grouping (computed)", "==> teacher cnn_mnist_teacher test acc@1"])
    check_run_folder(folder, tb, "cnn_mnist_student", [1], n_events=1)
    grouping = json.load(open(os.path.join(folder, "cka_grouping.json")))
    p, _ = launch(args + ["--epochs", "2", "--resume", os.path.join(folder, "cnn_mnist_student_last.pth")],
                  torchrun=True)
    assert_ok(p, ["resumed from", "grouping (restored from the checkpoint)", "epoch 2/2 "])
    ckpt = check_run_folder(folder, tb, "cnn_mnist_student", [1, 2], n_events=2)
    assert ckpt["distiller"]["_extra_state"]["teacher_ends"] == grouping["teacher_ends"]


def test_mp_spawn_student_crd(files, tmp_path, capfd):
    args = student_args(files, tmp_path, ["--distill", "crd", "-d", "0", "-b", "0.8", "--nce_k", "16",
                                          "--feat_dim", "16", "--epochs", "1"])
    folder, tb = student_folders(tmp_path, "crd", 1.0, 0.0, 0.8)
    p, _ = launch(args, torchrun=False, capfd=capfd)
    assert_ok(p, ["epoch 1/1 ", "world size 2"])
    ckpt = check_run_folder(folder, tb, "cnn_mnist_student", [1], n_events=1)
    assert ckpt["distiller"]["criterion.memory.memory_s"].shape == (N_TRAIN, 16)


def _threads() -> int | None:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None


def _ending_rank(local_rank, port, out_dir):
    """One rank of a tiny DDP run ended by the scripts' own path (engine._run_worker): reports whether
    its process group, and the threads the group started, outlived the run."""
    torch.set_num_threads(1)
    nn.Linear(4, 2)(torch.randn(3, 4)).sum().backward()  # any thread a plain step starts, before counting
    before = _threads()
    opt = SimpleNamespace(procs_per_node=2, node_rank=0, nodes=1, dist_url=f"tcp://127.0.0.1:{port}",
                          dist_backend=None, device="cpu", sync_bn=False)

    def worker(opt, local_rank):
        device = dist_util.init(opt, local_rank)
        model = wrap_ddp(nn.Linear(4, 2), opt, device)  # DDP's constructor is what imports torch.distributed.nn
        model(torch.randn(3, 4)).sum().backward()
        cycle = {"model": model}
        cycle["self"] = cycle  # a wrapper in a reference cycle, as a larger driver may leave one
        if local_rank == 0:
            time.sleep(0.5)  # rank 0 still writing its files
        return weakref.ref(dist.group.WORLD), time.time()

    group, done = _run_worker(worker, opt, local_rank)
    with open(os.path.join(out_dir, f"end{local_rank}.json"), "w") as f:
        json.dump({"group_alive": group() is not None, "threads": [before, _threads()], "done": done,
                   "ended": time.time()}, f)


def test_a_finished_rank_frees_its_process_group_and_threads(tmp_path):
    """The end of every run (helper.distributed.cleanup): no rank leaves before the others have finished
    their work (rank 0 its files), and after it no gloo thread is left that could
    still take the GIL during interpreter shutdown and abort the rank (SIGABRT, 'terminate called
    without an active exception'). Before the fix the group outlived destroy_process_group: DDP's
    constructor had imported torch.distributed.nn, whose functions keep ``group.WORLD`` as a default;
    a DDP wrapper in a reference cycle keeps it too until a garbage collection."""
    mp.spawn(_ending_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ends = [json.load(open(tmp_path / f"end{rank}.json")) for rank in (0, 1)]
    for rank, end in enumerate(ends):
        assert not end["group_alive"], f"rank {rank}: the process group outlived cleanup()"
        before, after = end["threads"]
        assert after == before, f"rank {rank}: {before} threads before the group, {after} after cleanup()"
    assert ends[1]["ended"] >= ends[0]["done"], "rank 1 left before rank 0 had finished its work"


def test_ddp_end_check_counts_clean_and_failed_runs(tmp_path):
    """scripts/ddp_end_check.py (the many-run evidence) on one run of each launcher (the test above
    covers the cause deterministically), and its verdict on the output of an aborted run."""
    out = tmp_path / "report.json"
    assert ddp_end_check.main(["--runs", "1", "--json", str(out)]) == 0
    report = json.load(open(out))
    assert {k: (v["clean"], v["runs"]) for k, v in report["launchers"].items()} == \
        {"torchrun": (1, 1), "spawn": (1, 1)}
    aborted = ddp_end_check.problems(1, "epoch 1/1 train loss 2.3", "terminate called without an active exception\n"
                                     "exitcode  : -6 (pid: 7)  (SIGABRT)", str(tmp_path / "nothing"))
    assert aborted == ["exit 1", "'terminate called'", "'SIGABRT'", "0 run folders"]


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "mp.spawn"])
def test_error_on_one_rank_stops_all_ranks(files, tmp_path, torchrun, capfd):
    args = student_args(files, tmp_path, ["--distill", "kd", "--epochs", "3", "--skip-validation"])
    p, took = launch(args, torchrun=torchrun, capfd=capfd, env_extra={FAIL_AT_ENV: "1:2"}, timeout=180)
    assert p.returncode != 0
    assert "failure injected on rank 1 at step 2" in p.stderr, p.stderr[-3000:]
    assert "epoch 1/3 " not in p.stdout  # rank 0 stopped in its second step, waiting for rank 1
    assert not glob.glob(os.path.join(tmp_path, "students", "models", "*", "*.pth"))
    assert took < 120, f"the failure took {took:.0f}s to stop the run"


def test_bad_input_after_the_group_is_up_is_one_line_from_all_ranks(files, tmp_path, capfd):
    """A ConfigError that every rank raises after init_process_group: one line (rank 0's), exit code 2."""
    args = student_args(files, tmp_path, ["--distill", "cka_group", "-b", "1", "--batch_size", "4",
                                          "--skip-validation"])
    p, _ = launch(args, torchrun=False, capfd=capfd)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "per rank" in lines[0] and "--cka_gather" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("extra, words", [(["--sync_bn"], "--sync_bn needs CUDA"),
                                          (["--world-size", "2"], "--world-size 2 counts nodes")])
def test_distributed_refusals(files, tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", "cnn_mnist_student", "--epochs", "1", "--device", "cpu"]
                           + base_args(files, tmp_path) + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_mp_spawn_group_each_student_ddp_wrapped_writes_once(files, tmp_path, capfd):
    """train_group.py under DDP: the teacher's outputs per rank, each student its own DDP module; every
    student's folder is written once (rank 0), and cka_group's --cka_gather and CRD's collectives interleave
    correctly between the students of one process."""
    args = ["train_group.py"] + student_args(files, tmp_path, ["--epochs", "1"])[1:] + [
        "--student", "--distill kd -c 1 -d 1",
        "--student", "--distill crd -c 1 -d 0 -b 0.8 --nce_k 16 --feat_dim 16",
        "--student", "--distill cka_group -c 1 -d 1 -b 1 --cka_gather --cka_images 32"]
    p, _ = launch(args, torchrun=False, capfd=capfd)
    assert_ok(p, ["[1/3 kd cnn_mnist_student t1] epoch 1/1 ", "[3/3 cka_group cnn_mnist_student t1] epoch 1/1 "])
    for distill, w in (("kd", (1.0, 1.0, 0.0)), ("crd", (1.0, 0.0, 0.8)), ("cka_group", (1.0, 1.0, 1.0))):
        folder, tb = student_folders(tmp_path, distill, *w)
        check_run_folder(folder, tb, "cnn_mnist_student", [1], n_events=1)
