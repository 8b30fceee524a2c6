"""Per-student throughput of a group of K students (train_group.py) against K separate runs, in one run.

    python benchmarks/bench_group.py                        # resnet32x4 -> resnet8x4, batch 64, K = 1, 8, 17
    python benchmarks/bench_group.py --device cuda --json group.json
    python benchmarks/bench_group.py --smoke --json /tmp/g.json   # CI: tiny models, seconds

The ideal below assumes every student costs the same step (one method, one architecture: the default
``--methods kd``); with mixed methods K = 1 times the first method only.

What runs is the loop itself: ``helper.loops.train_one_epoch`` over a list of K runs that share one
``FrozenTeacher`` (one teacher forward per batch, each run stepping in its own RNG stream), exactly what
train_group.py drives, on bench_step.py's synthetic CIFAR-100-shaped data served by the real tensor loader.
K separate runs cost K times one run's step (K = 1 in the same measurement).

The ideal. With T the teacher's forward and S one student's step (its forward, losses, backward and
optimiser step) on a batch, K separate runs cost K (T + S) and a group T + K S, so the per-student speed-up
is at best ``K (T + S) / (T + K S)``. T is timed on its own (the teacher's outputs for one batch, as the
loop asks for them), S = t(K=1) - T; the report gives the measured ratio K t(1) / t(K), the ideal and the
fraction of the ideal reached, and where the rest goes: the per-student overhead (t(K) - T - K S) / K.

Timing: one warm-up step per K, then ``--repeats`` windows of ``--iters`` steps per K, round-robin (load
from other processes spreads over every row), median window. CPU runs report process CPU time as well.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_step  # noqa: E402
import dataset  # noqa: E402
import train_student  # noqa: E402
from distiller_zoo import BuildContext, build_distiller, get_distiller_class  # noqa: E402
from helper.engine import place  # noqa: E402
from helper.forward import transform_key  # noqa: E402
from helper.loops import DistillStudent, Run, train_one_epoch  # noqa: E402
from helper.optim import build_optimizer  # noqa: E402
from helper.teachers import FrozenTeacher  # noqa: E402
from helper.util import RNGStream  # noqa: E402
from models import model_dict  # noqa: E402


def build_group(args, device, data, k_max: int):
    """``k_max`` students of ``--methods`` (cycled) with seeds 0..k_max-1 and one shared frozen teacher."""
    methods = [args.methods[i % len(args.methods)] for i in range(k_max)]
    opts = [bench_step.base_options(args, m, bench_step.Paths()) for m in methods]
    torch.manual_seed(0)
    model_t = place(model_dict[args.teacher](num_classes=data.num_classes), opts[0], device)
    classes = [get_distiller_class(m) for m in methods]
    union = frozenset().union(*(c.needs for c in classes))
    shape = model_t.input_shape
    t_probe = train_student.probe(model_t, union, shape, device)
    cache, inners, streams = {}, [], []
    for i, (opt, cls) in enumerate(zip(opts, classes)):
        opt.seed = i
        stream = RNGStream(i, device)
        with stream:
            student = place(model_dict[args.student](num_classes=data.num_classes), opt, device)
            ctx = BuildContext(opt=opt, s_probe=train_student.probe(student, cls.needs, shape, device), t_probe=t_probe,
                               model_s=student, model_t=model_t, num_classes=data.num_classes, n_train=data.n_train,
                               local_batch_size=opt.batch_size, train_targets=data.train_targets, device=device,
                               plain_train_images=data.plain_train_images, cache=cache)
            distiller = build_distiller(opt.distill, ctx).to(device)
            distiller.prepare(lambda *a: None)
        inners.append(place(DistillStudent(student, distiller, opt), opt, device))
        streams.append(stream)
    views = {transform_key(inner.distiller.layer_transform): inner.distiller.layer_transform for inner in inners}
    teacher = FrozenTeacher(model_t, union, layer_views=views)
    runs = [Run(opt, inner, build_optimizer(inner.parameters(), opt), teacher, rng=stream)
            for opt, inner, stream in zip(opts, inners, streams)]
    return runs, teacher


def time_window(runs, stream, steps: int, device, epoch: int) -> tuple[float, float]:
    bench_step.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    train_one_epoch(epoch, bench_step.Take(stream, steps), runs, device, log=lambda *a: None)
    bench_step.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def time_teacher(teacher, stream, steps: int, device) -> tuple[float, float]:
    """Seconds per batch of the shared teacher's outputs, as the loop asks for them."""
    from helper.loops import to_batch
    batches = [to_batch(next(stream), device) for _ in range(steps)]
    teacher.outputs(batches[0].images)
    bench_step.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        teacher.outputs(b.images)
    bench_step.synchronize(device)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny models and counts: structure only, for CI")
    p.add_argument("--json", default=None)
    p.add_argument("--teacher", default=None, help="default resnet32x4 (smoke: resnet14)")
    p.add_argument("--student", default=None, help="default resnet8x4 (smoke: resnet8)")
    p.add_argument("--methods", default="kd", help="comma-separated --distill names, cycled over the K students")
    p.add_argument("--ks", default=None, help="group sizes (default 1,8,17; smoke 1,2)")
    p.add_argument("--batch_size", type=int, default=None, help="default 64 (smoke 8)")
    p.add_argument("--n_train", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="steps per window (default cpu 2, cuda 50)")
    p.add_argument("--repeats", type=int, default=None, help="windows per K (default 3)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--nce_k", type=int, default=None)
    p.add_argument("--cka_images", type=int, default=None)
    args = p.parse_args(argv)
    args.compile_mode = "default"  # bench_step.base_options reads it; groups are timed eager
    s = args.smoke
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.device = str(device)
    gpu = device.type == "cuda"
    defaults = dict(teacher="resnet14" if s else "resnet32x4", student="resnet8" if s else "resnet8x4",
                    batch_size=8 if s else 64, n_train=256 if s else 50000, iters=1 if s else (50 if gpu else 2),
                    repeats=1 if s else 3, ks="1,2" if s else "1,8,17", nce_k=64 if s else 16384,
                    cka_images=32 if s else 1000)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.methods = [m for m in args.methods.split(",") if m]
    args.ks = sorted({int(k) for k in str(args.ks).split(",")} | {1})
    return args, device


def main(argv=None):
    args, device = parse_args(argv)
    if device.type == "cpu" and (args.threads or args.smoke):
        torch.set_num_threads(args.threads or 1)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t_start = time.time()
    bench_step.register_synthetic(args.n_train, max(args.batch_size, 64))
    opt = argparse.Namespace(dataset=bench_step.SYNTHETIC, batch_size=args.batch_size, num_workers=0, seed=0,
                             loader="tensor", train_subset=0, data_folder=None)
    data = dataset.get_dataloaders(opt, (3, 32, 32), device=device)
    stream = bench_step.Stream(data.train_loader, args.batch_size)
    runs, teacher = build_group(args, device, data, max(args.ks))
    log(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.teacher} -> "
        f"{args.student} x {max(args.ks)} ({','.join(args.methods)}), batch {args.batch_size}, K = {args.ks}")
    for k in args.ks:  # warm-up
        time_window(runs[:k], stream, 1, device, epoch=1)
    windows = {k: [] for k in args.ks}
    t_teacher = []
    for r in range(args.repeats):
        t_teacher.append(time_teacher(teacher, stream, args.iters, device))
        for k in args.ks:
            windows[k].append(time_window(runs[:k], stream, args.iters, device, epoch=2 + r))
    step = {k: statistics.median(w for w, _ in windows[k]) / args.iters for k in args.ks}
    cpu = {k: statistics.median(c for _, c in windows[k]) / args.iters for k in args.ks}
    T, T_cpu = statistics.median(t for t, _ in t_teacher), statistics.median(c for _, c in t_teacher)
    result = {"meta": bench_step.machine_info(device) | {"smoke": args.smoke, "args": vars(args)},
              "teacher_s_per_batch": T, "teacher_cpu_s_per_batch": T_cpu, "rows": []}
    for k in args.ks:
        row = {"K": k, "step_s": step[k], "per_student_img_per_s": k * args.batch_size / step[k]}
        for key, times, t in (("wall", step, T), ("cpu", cpu, T_cpu)):
            S = max(times[1] - t, 1e-12)
            measured = k * times[1] / times[k]
            ideal = k * (t + S) / (t + k * S)
            row[key] = {"ratio": measured, "ideal": ideal, "fraction_of_ideal": measured / ideal,
                        "teacher_share": t / times[1], "student_s": S,
                        "overhead_per_student_s": (times[k] - t - k * S) / k}
        result["rows"].append(row)
        w, c = row["wall"], row["cpu"]
        log(f"K={k:3d}  {step[k] * 1000:9.1f} ms/step  {row['per_student_img_per_s']:8.1f} img/s per student  "
            f"group/separate {w['ratio']:.3f} of ideal {w['ideal']:.3f} = {100 * w['fraction_of_ideal']:.1f}%  "
            f"(CPU time: {c['ratio']:.3f} / {c['ideal']:.3f} = {100 * c['fraction_of_ideal']:.1f}%)  "
            f"overhead/student {1000 * w['overhead_per_student_s']:+.1f} ms")
    log(f"teacher forward {T * 1000:.1f} ms/batch = {100 * T / step[1]:.1f}% of a K=1 step")
    result["meta"]["wall_s"] = time.time() - t_start
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
