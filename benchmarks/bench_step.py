"""Training throughput of one KD step and of the loaders, with every speed path on and off, in one run.

    python benchmarks/bench_step.py                          # resnet32x4 -> resnet8x4, batch 64, CIFAR-100 shapes
    python benchmarks/bench_step.py --device cuda --json bench.json
    python benchmarks/bench_step.py --breakdown              # also: where a KD step's time goes
    python benchmarks/bench_step.py --smoke --json /tmp/s.json   # CI: tiny models, seconds

What runs is the project's own code, not a re-implementation: synthetic uint8 CIFAR-100-shaped images
(50,000 x 3x32x32, 100 classes) are served by ``dataset.get_dataloaders`` (the 'tensor' loader, resident
on the device), models come from ``model_dict``, distillers from the registry (built from probe passes as
train_student.py builds them), and each timed window is a call of ``helper.loops.train_one_epoch`` with
``DistillStudent`` and ``FrozenTeacher``. Teachers are untrained (timing does not depend on the weights).

Configurations (each a row of the JSON, ``paths`` says which speed paths it has on):

* ``teacher_train/off|on``: train_teacher.py's step for the teacher architecture (plain CE, no teacher);
* ``<method>/default``: the loop's defaults: fp32, NCHW, teacher under inference_mode, eager;
* ``<method>/off``: everything off, RepDistiller's way: fp32, NCHW, teacher under no_grad, eager;
* ``<method>/on``: bf16 autocast + channels_last + inference_mode teacher (+ torch.compile where enabled);
* ``kd/amp``, ``kd/channels_last``, ``kd/compile``: one path switched on from ``kd/default``.

On a CPU without native bf16 (AVX512-BF16/AMX), autocast emulates it: each ``/on`` and ``kd/amp`` step then
takes tens of seconds for resnet32x4 (measured on a 2-core AMD EPYC: about a minute per warm-up step), so
CPU runs in BENCHMARKS.md leave those rows out with ``--only``; --amp is a GPU speed path.

Timing: warm-up steps first (torch.compile compiles there), then ``--repeats`` windows of ``--iters``
steps for every configuration, round-robin, so that load from other processes spreads over all of them;
the median window is reported. On CUDA every window starts and ends with ``torch.cuda.synchronize()``.
Only full batches are fed (the stream skips each epoch's last partial batch) so compiled graphs keep
static shapes. Ratios are of images/s measured in this one run.

The loader benchmark times, on the same synthetic data: the torchvision PIL pipeline exactly as
RepDistiller writes it (DataLoader, N workers, RandomCrop(32, 4) + flip + ToTensor + Normalize), this
project's 'torch' loader (the same transforms, seeded per sample) and its 'tensor' loader (one intra-op
thread on CPU); on CUDA each batch is also moved to the GPU (pinned, non_blocking) and synchronised.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset  # noqa: E402
import train_student  # noqa: E402
import train_teacher  # noqa: E402
from dataset.base import ArraySplit  # noqa: E402
from distiller_zoo import BuildContext, build_distiller, get_distiller_class  # noqa: E402
from helper.engine import place  # noqa: E402
from helper.forward import COMPILE_MODES, compile_model, new_step  # noqa: E402
from helper.loops import DistillStudent, Run, autocast, to_batch, train_one_epoch  # noqa: E402
from helper.optim import build_optimizer  # noqa: E402
from helper.teachers import FrozenTeacher, for_student  # noqa: E402
from models import model_dict  # noqa: E402

METHODS = ("kd", "crd", "semckd", "cka_group")
SYNTHETIC = "bench_cifar100"   # a dataset name registered by this script: CIFAR-100's spec, synthetic arrays
TARGETS = {  # docs/performance.md's table; checked only where the device is the one they are stated for
    "cka_group/kd step time": "<= 1.2 (stretch; target 1.5)",
    "crd/kd step time": "<= 1.5",
    "tensor/PIL loader per core": ">= 3",
    "H100 kd/on img/s (eager bf16 + channels_last + inference_mode + GPU loader)": ">= 20000",
    "H100 kd/on img/s with compile reduce-overhead": ">= 40000",
    "H100 speed paths on/off": ">= 2",
}


@dataclasses.dataclass(frozen=True)
class Paths:
    amp: bool = False
    channels_last: bool = False
    inference_mode: bool = True
    compile: bool = False

    def label(self) -> str:
        on = [k for k in ("amp", "channels_last", "compile") if getattr(self, k)]
        return "+".join(on + (["inference_mode"] if self.inference_mode else ["no_grad"]))


# ---- timing ------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Laps:
    """Wall-clock laps between synchronisation points (CUDA: every lap waits for the GPU)."""

    def __init__(self, device):
        self.device = device
        self.times = OrderedDict()
        synchronize(device)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        self.t = now


# ---- data: synthetic CIFAR-100 through the real loaders ----------------------------------------

def register_synthetic(n_train: int, n_val: int, seed: int = 0) -> None:
    """CIFAR-100's spec (augmentation, normalisation, 100 classes) over random uint8 images."""
    rng = np.random.default_rng(seed)

    def split(n):
        return ArraySplit(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
                          rng.permutation(np.arange(n) % 100).astype(np.int64))

    arrays = (split(n_train), split(n_val))
    dataset.DATASETS[SYNTHETIC] = dataclasses.replace(dataset.DATASETS["cifar100"], name=SYNTHETIC,
                                                      load=lambda data_folder, download=False: arrays)


class Stream:
    """Full batches of a real train loader, epoch after epoch (set_epoch each time), as training sees them.

    A last partial batch is skipped: compiled graphs keep static shapes (the loop itself would run it
    eagerly) and every timed step has the same size."""

    def __init__(self, loader, batch_size: int):
        self.loader, self.batch_size, self.epoch = loader, batch_size, 1
        self.loader.set_epoch(self.epoch)
        self.it = iter(loader)

    def __next__(self):
        while True:
            try:
                data = next(self.it)
            except StopIteration:
                self.epoch += 1
                self.loader.set_epoch(self.epoch)
                self.it = iter(self.loader)
                continue
            if data[1].size(0) == self.batch_size:
                return data


class Take:
    """``n`` batches of a stream, as a loader for one ``train_one_epoch`` call."""

    def __init__(self, stream: Stream, n: int):
        self.stream, self.n = stream, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.stream)


# ---- building one configuration as the training scripts do ------------------------------------

def base_options(args, method, paths: Paths):
    common = ["--batch_size", str(args.batch_size), "--epochs", "240", "--print_freq", "0", "--skip_save",
              "--trial", "0", "--device", args.device]
    if method is None:
        opt = train_teacher.parse_option(["--model", args.teacher] + common)
    else:
        cls = get_distiller_class(method)
        flags = getattr(cls, "recommended", "-b 1").split()
        opt = train_student.parse_option(["--distill", method, "--path_t", "synthetic.pth", "--model_s",
                                          args.student] + common + flags)
        opt.nce_k, opt.cka_images = args.nce_k, args.cka_images
    opt.dataset = SYNTHETIC
    opt.amp, opt.channels_last, opt.compile = paths.amp, paths.channels_last, paths.compile
    opt.compile_mode = args.compile_mode
    return opt


class Config:
    """One row: a method (None: the teacher's own training step) with a set of speed paths."""

    def __init__(self, name, method, paths: Paths, args, device, data):
        self.name, self.method, self.paths = name, method, paths
        self.device = device
        torch.manual_seed(0)
        opt = self.opt = base_options(args, method, paths)
        if method is None:
            model = model_dict[args.teacher](num_classes=data.num_classes)
            self.inner = place(DistillStudent(model, None, opt), opt, device)
            self.teacher = None
            if paths.compile:
                compile_model(self.inner.student, opt.compile_mode)
            self.optimizer = build_optimizer(self.inner.parameters(), opt)
            return
        cls = get_distiller_class(method)
        student = place(model_dict[args.student](num_classes=data.num_classes), opt, device)
        model_t = place(model_dict[args.teacher](num_classes=data.num_classes), opt, device)
        shape = student.input_shape
        ctx = BuildContext(opt=opt, s_probe=train_student.probe(student, cls.needs, shape, device),
                           t_probe=train_student.probe(model_t, cls.needs, shape, device), model_s=student,
                           model_t=model_t, num_classes=data.num_classes, n_train=data.n_train,
                           local_batch_size=opt.batch_size, train_targets=data.train_targets, device=device,
                           plain_train_images=data.plain_train_images)
        distiller = build_distiller(method, ctx).to(device)
        self.inner = place(DistillStudent(student, distiller, opt), opt, device)
        self.teacher = FrozenTeacher(model_t, cls.needs, inference_mode=paths.inference_mode,
                                     layer_transform=distiller.layer_transform)
        distiller.prepare(lambda *a: None)
        if paths.compile:  # as train_student.py: after the runners' hooks exist
            for m in (student, model_t):
                compile_model(m, opt.compile_mode)
        self.optimizer = build_optimizer(self.inner.parameters(), opt)

    def run(self, stream: Stream, steps: int, epoch: int = 1) -> tuple[float, float]:
        """(wall, process CPU) seconds of ``steps`` training steps through ``train_one_epoch`` (synchronised)."""
        synchronize(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        train_one_epoch(epoch, Take(stream, steps), [Run(self.opt, self.inner, self.optimizer, self.teacher)],
                        self.device, log=lambda *a: None)
        synchronize(self.device)
        return time.perf_counter() - t0, time.process_time() - c0

    def breakdown(self, stream: Stream, steps: int) -> dict:
        """The phases of the loop's step, each closed by a synchronisation (milliseconds per step)."""
        opt, inner, teacher, device = self.opt, self.inner, self.teacher, self.device
        inner.train()
        laps = Laps(device)
        for _ in range(steps):
            new_step(opt, device)
            data = next(stream)
            batch = to_batch(data, device, opt.channels_last)
            laps.lap("loader")
            with autocast(opt, device):
                t_out = teacher.outputs(batch.images) if teacher is not None else None
                t_for = for_student(t_out) if t_out is not None else None
            laps.lap("teacher_forward")
            with autocast(opt, device):
                s_out = inner.runner(batch.images)
            laps.lap("student_forward")
            with autocast(opt, device):
                res = inner.losses(s_out, batch, t_for)
            laps.lap("losses")
            self.optimizer.zero_grad(set_to_none=True)
            res["loss"].backward()
            laps.lap("backward")
            self.optimizer.step()
            laps.lap("optimizer")
            if inner.distiller is not None:
                with torch.no_grad():
                    inner.distiller.after_step(res["s_out"], t_out, batch)
            laps.lap("distiller_update")
        ms = {k: 1000.0 * v / steps for k, v in laps.times.items()}
        total = sum(ms.values())
        return {"ms_per_step": ms, "share": {k: v / total for k, v in ms.items()}, "total_ms": total,
                "img_per_s": 1000.0 * opt.batch_size / total}


def compile_status(device: torch.device, asked: str, smoke: bool) -> tuple[bool, str]:
    if asked == "off":
        return False, "--compile off"
    if smoke and asked == "auto":
        return False, "smoke mode (compilation takes minutes)"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed (inductor's GPU backend)"
        return True, "inductor (triton)"
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return False, "no C++ compiler on PATH (inductor's CPU backend needs one)"
    return True, f"inductor (C++: {cxx})"


def plan(args, compile_ok: bool, compile_everywhere: bool):
    """(name, method, Paths) of every configuration."""
    default, off = Paths(), Paths(inference_mode=False)
    out = [("teacher_train/off", None, off),
           ("teacher_train/on", None, Paths(amp=True, channels_last=True, compile=compile_ok and compile_everywhere))]
    for m in args.methods:
        on = Paths(amp=True, channels_last=True, compile=compile_ok and (compile_everywhere or m == "kd"))
        out += [(f"{m}/default", m, default), (f"{m}/off", m, off), (f"{m}/on", m, on)]
        if m == "kd":
            out += [("kd/amp", m, Paths(amp=True)), ("kd/channels_last", m, Paths(channels_last=True))]
            if compile_ok:
                out.append(("kd/compile", m, Paths(compile=True)))
    return out


# ---- loaders -----------------------------------------------------------------------------------

class RepDistillerCIFAR(torch.utils.data.Dataset):
    """RepDistiller's CIFAR-100 train set, as its dataset/cifar100.py serves it: PIL image -> transforms."""

    def __init__(self, images, targets, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.targets[i])


def _one_thread(_):
    torch.set_num_threads(1)


def time_loader(make_iter, device, batches: int, batch_size: int) -> float:
    """img/s of ``batches`` batches after a first (warm-up) batch; each batch lands on ``device``."""
    it = make_iter()
    x = next(it)[0].to(device, non_blocking=True)
    synchronize(device)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            data = next(it)
        except StopIteration:
            it = make_iter()
            data = next(it)
        x = data[0].to(device, non_blocking=True)
        n += x.shape[0]
    synchronize(device)
    return n / (time.perf_counter() - t0)


def bench_loaders(args, device) -> list:
    from torchvision import transforms as T

    spec = dataset.DATASETS[SYNTHETIC]
    train, _ = spec.load(None)
    n = min(args.loader_images, len(train))
    images, targets = train.images[:n], train.targets[:n]
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(spec.mean, spec.std)])
    batches = max(1, n // args.batch_size - 1)
    rows = []
    cuda = device.type == "cuda"
    for w in sorted({0, args.loader_workers}):
        dl = torch.utils.data.DataLoader(RepDistillerCIFAR(images, targets, tf), batch_size=args.batch_size,
                                         shuffle=True, num_workers=w, pin_memory=cuda,
                                         persistent_workers=w > 0, worker_init_fn=_one_thread if w else None)
        with threads(1):
            rate = time_loader(lambda: iter(dl), device, batches, args.batch_size)
        rows.append({"name": f"torchvision_pil/w{w}", "workers": w, "cores": max(w, 1), "img_per_s": rate,
                     "img_per_s_per_core": rate / max(w, 1)})
        del dl
    for kind in ("torch", "tensor"):
        w = args.loader_workers if kind == "torch" else 0
        opt = argparse.Namespace(dataset=SYNTHETIC, batch_size=args.batch_size, num_workers=w, seed=0,
                                 loader=kind, train_subset=n if n < len(train) else 0, data_folder=None)
        bundle = dataset.get_dataloaders(opt, (3, 32, 32), device=device)
        bundle.set_epoch(1)
        with threads(1):
            rate = time_loader(lambda: iter(bundle.train_loader), device, batches, args.batch_size)
        cores = max(w, 1)
        rows.append({"name": f"ours_{kind}/w{w}" if kind == "torch" else "ours_tensor",
                     "workers": w, "cores": cores, "img_per_s": rate, "img_per_s_per_core": rate / cores,
                     "note": "one intra-op thread" if kind == "tensor" and not cuda else ""})
        del bundle
    return rows


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- the run -----------------------------------------------------------------------------------

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def compute_ratios(rows: dict, loaders: list, key: str = "img_per_s") -> dict:
    ips = {k: v[key] for k, v in rows.items() if key in v}
    r = OrderedDict()
    for m in METHODS[1:]:  # step-time ratios at the loop's defaults: time(method) / time(kd)
        r[f"{m}/kd step time"] = ratio(ips.get("kd/default"), ips.get(f"{m}/default"))
    r["amp/fp32 speed-up (kd)"] = ratio(ips.get("kd/amp"), ips.get("kd/default"))
    r["channels_last/NCHW speed-up (kd)"] = ratio(ips.get("kd/channels_last"), ips.get("kd/default"))
    r["inference_mode/no_grad teacher speed-up (kd)"] = ratio(ips.get("kd/default"), ips.get("kd/off"))
    r["compile/eager speed-up (kd)"] = ratio(ips.get("kd/compile"), ips.get("kd/default"))
    for m in ("teacher_train",) + METHODS:
        r[f"speed paths on/off ({m})"] = ratio(ips.get(f"{m}/on"), ips.get(f"{m}/off"))
    by = {row["name"]: row for row in loaders} if key == "img_per_s" else {}
    pil = [row for row in loaders if row["name"].startswith("torchvision_pil")]
    if pil and "ours_tensor" in by:
        best = max(pil, key=lambda row: row["img_per_s_per_core"])
        r["tensor/PIL loader per core"] = ratio(by["ours_tensor"]["img_per_s_per_core"], best["img_per_s_per_core"])
        r["tensor/PIL loader absolute"] = ratio(by["ours_tensor"]["img_per_s"], max(p["img_per_s"] for p in pil))
    return {k: v for k, v in r.items() if v is not None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    p.add_argument("--smoke", action="store_true", help="tiny models and counts: structure only, for CI")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--teacher", default=None, help="default resnet32x4 (smoke: resnet14)")
    p.add_argument("--student", default=None, help="default resnet8x4 (smoke: resnet8)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated --distill names")
    p.add_argument("--only", default=None, help="comma-separated configuration names to run (default: all)")
    p.add_argument("--batch_size", type=int, default=None, help="default 64 (smoke: 8)")
    p.add_argument("--n_train", type=int, default=None, help="synthetic training images (default 50000)")
    p.add_argument("--iters", type=int, default=None, help="steps per timed window (default cpu 2, cuda 50)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per configuration (default cpu 1, cuda 20)")
    p.add_argument("--repeats", type=int, default=None, help="timed windows per configuration (default 3)")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="auto: every method on CUDA, kd only on CPU (each compile takes minutes there), none in "
                        "--smoke; on: every method")
    p.add_argument("--compile_mode", default="default", choices=COMPILE_MODES)
    p.add_argument("--breakdown", action="store_true", help="also time the phases of a step (synchronised)")
    p.add_argument("--breakdown_configs", default="kd/default,kd/on,crd/default,semckd/default,cka_group/default")
    p.add_argument("--no_loader", action="store_true", help="skip the loader benchmark")
    p.add_argument("--no_steps", action="store_true", help="skip the step benchmark")
    p.add_argument("--loader_workers", type=int, default=None, help="DataLoader workers (default: min(8, cores))")
    p.add_argument("--loader_images", type=int, default=None, help="images per loader pass (default 10000)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for the steps on CPU (0: torch's default; --smoke: 1)")
    p.add_argument("--nce_k", type=int, default=None, help="CRD negatives (default 16384, RepDistiller's)")
    p.add_argument("--cka_images", type=int, default=None, help="cka_group grouping images (default 1000)")
    args = p.parse_args(argv)
    s = args.smoke
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.device = str(device)
    gpu = device.type == "cuda"
    defaults = dict(teacher="resnet14" if s else "resnet32x4", student="resnet8" if s else "resnet8x4",
                    batch_size=8 if s else 64, n_train=256 if s else 50000, iters=1 if s else (50 if gpu else 2),
                    warmup=0 if s else (20 if gpu else 1), repeats=1 if s else 3,
                    loader_workers=1 if s else min(8, os.cpu_count() or 1), loader_images=128 if s else 10000,
                    nce_k=64 if s else 16384, cka_images=32 if s else 1000)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.methods = [m for m in args.methods.split(",") if m]
    return args, device


def machine_info(device) -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv=None):
    args, device = parse_args(argv)
    if device.type == "cpu" and (args.threads or args.smoke):
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t_start = time.time()
    register_synthetic(args.n_train, max(args.batch_size, 1000 if not args.smoke else 64))
    compile_ok, compile_why = compile_status(device, args.compile, args.smoke)
    result = {"meta": machine_info(device) | {"smoke": args.smoke, "args": vars(args),
                                               "compile": {"enabled": compile_ok, "why": compile_why}},
              "steps": [], "loader": [], "ratios": {}, "breakdown": {}, "targets": TARGETS}
    if device.type == "cpu":
        result["ratios_cpu_time"] = {}
    log(f"device {device}, torch {torch.__version__}, {result['meta']['cpu']}, {torch.get_num_threads()} threads; "
        f"{args.teacher} -> {args.student}, batch {args.batch_size}; compile: {compile_ok} ({compile_why})")

    rows = OrderedDict()
    if not args.no_steps:
        opt = argparse.Namespace(dataset=SYNTHETIC, batch_size=args.batch_size, num_workers=0, seed=0, loader="tensor",
                                 train_subset=0, data_folder=None)
        data = dataset.get_dataloaders(opt, (3, 32, 32), device=device)
        stream = Stream(data.train_loader, args.batch_size)
        configs = []
        only = set(args.only.split(",")) if args.only else None
        for name, method, paths in plan(args, compile_ok, args.compile == "on" or device.type == "cuda"):
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            cfg = Config(name, method, paths, args, device, data)
            if args.warmup:
                cfg.run(stream, args.warmup)  # warm-up (and compilation)
            log(f"  built + warmed {name:24s} in {time.perf_counter() - t0:6.1f} s")
            configs.append(cfg)
        times = {c.name: [] for c in configs}
        for r in range(args.repeats):  # round-robin: load from other processes spreads over every row
            for c in configs:
                times[c.name].append(c.run(stream, args.iters, epoch=1 + r))
        n_img = args.iters * args.batch_size
        for c in configs:
            wall = statistics.median(t for t, _ in times[c.name])
            cpu = statistics.median(t for _, t in times[c.name])
            rows[c.name] = {"name": c.name, "method": c.method or "teacher_train", "paths": dataclasses.asdict(c.paths),
                            "label": c.paths.label(), "img_per_s": n_img / wall, "step_ms": 1000.0 * wall / args.iters,
                            "windows_wall_s": [t for t, _ in times[c.name]],
                            "windows_cpu_s": [t for _, t in times[c.name]], "iters": args.iters,
                            "batch_size": args.batch_size}
            if device.type == "cpu":  # CPU seconds of this process: what a step costs, whatever the machine's load
                rows[c.name]["img_per_cpu_s"] = n_img / cpu
                rows[c.name]["step_cpu_ms"] = 1000.0 * cpu / args.iters
            log(f"{c.name:24s} {rows[c.name]['img_per_s']:9.1f} img/s  {rows[c.name]['step_ms']:9.1f} ms/step"
                + (f"  {rows[c.name]['step_cpu_ms']:9.1f} CPU-ms/step" if device.type == "cpu" else "")
                + f"  [{c.paths.label()}]")
        if args.breakdown:
            want = set(args.breakdown_configs.split(","))
            for c in configs:
                if c.name in want:
                    c.breakdown(stream, 1)  # warm the phase-by-phase path (compiled graphs already exist)
                    bd = c.breakdown(stream, args.iters)
                    result["breakdown"][c.name] = bd
                    log(f"breakdown {c.name}: " + ", ".join(
                        f"{k} {v:.1f} ms ({100 * bd['share'][k]:.0f}%)" for k, v in bd["ms_per_step"].items())
                        + f"; sum {bd['total_ms']:.1f} ms")
        result["steps"] = list(rows.values())
        del configs, data, stream
    if not args.no_loader:
        result["loader"] = bench_loaders(args, device)
        for row in result["loader"]:
            log(f"loader {row['name']:22s} {row['img_per_s']:11.0f} img/s  {row['img_per_s_per_core']:11.0f} per core")
    result["ratios"] = compute_ratios(rows, result["loader"])
    if device.type == "cpu":
        result["ratios_cpu_time"] = compute_ratios(rows, [], key="img_per_cpu_s")
    for k, v in result["ratios"].items():
        cpu = result.get("ratios_cpu_time", {}).get(k)
        log(f"ratio {k:48s} {v:7.3f}" + (f"   (CPU time: {cpu:.3f})" if cpu is not None else ""))
    result["meta"]["wall_s"] = time.time() - t_start
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
