"""Distil a student from a teacher with any registered method (one loop, no per-method branches).

    python train_student.py --path_t save/teachers/models/resnet32x4_vanilla_cifar100_trial_0/resnet32x4_best.pth \
        --model_s resnet8x4 --dataset cifar100 --distill cka_group -b 1

Loss: ``cls * CE + div * KL(T) + beta * distill`` (-c/--cls, -d/--div, -b/--beta; RepDistiller's
-r/--gamma and -a/--alpha are aliases). ``--kd_mode`` picks who teaches: a frozen pre-trained teacher
(offline), the student's own EMA (self) or a peer trained alongside (online, deep mutual learning).
Saves to save/students/models/S:<s>_T:<t>_<dataset>_<distill>_r:<cls>_a:<div>_b:<beta>_<trial>/.
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings

import torch

import dataset
from distiller_zoo import DISTILLERS, BuildContext, build_distiller, get_distiller_class
from helper import distributed as dist_util
from helper.checkpoint import SPLIT, build_teacher
from helper.engine import TrainRun, count_params, fit, load_resume, place, run_main, wrap_ddp
from helper.errors import ConfigError
from helper.forward import ModelRunner, compile_model, transform_key
from helper.logger import RunLogger
from helper.loops import DistillStudent, Run, train_one_epoch, uses_strong_view, validate
from helper.mixup import Mixup
from helper.optim import build_optimizer, reduces_own_gradients
from helper.options import add_common_args, finish_common
from helper.pretrained import check_published_accuracy
from helper.teachers import EMATeacher, FrozenTeacher, PeerTeacher
from helper.util import RNGStream, set_seed
from models import model_dict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="distil a student (RepDistiller/SemCKD/SimKD flags)")
    g = p.add_argument_group("distillation")
    g.add_argument("--model_s", default="resnet8x4", help="student, a model_dict name")
    g.add_argument("--path_t", default=None, help="teacher checkpoint (offline; optional init for online)")
    g.add_argument("--model_t", default=None, help="teacher architecture when the checkpoint/folder does not say")
    g.add_argument("--distill", default="kd", help="method: " + ", ".join(sorted(DISTILLERS)))
    g.add_argument("--kd_mode", default="offline", choices=("offline", "online", "self"),
                   help="offline: frozen teacher; online: peer trained together (DML); self: EMA of the student")
    g.add_argument("--self_ema", type=float, default=0.999, help="EMA decay of the self-distillation teacher")
    g.add_argument("-c", "--cls", "-r", "--gamma", dest="cls", type=float, default=1.0,
                   help="weight of the cross-entropy term")
    g.add_argument("-d", "--div", "-a", "--alpha", dest="div", type=float, default=1.0,
                   help="weight of the KD term KL(student/T || teacher/T) * T^2")
    g.add_argument("-b", "--beta", type=float, default=0.0,
                   help="weight of the method's own loss (NOT the batch size: that is --batch_size)")
    g.add_argument("--kd_T", type=float, default=4.0, help="KD temperature (logit standardisation's base T)")
    g.add_argument("--logit_stand", action="store_true",
                   help="logit standardisation (Sun et al. 2024): z-score student and teacher logits per sample "
                        "before every temperature-scaled logit loss (the -d term, dkd, mlkd, ctkd)")
    g.add_argument("--beta_warmup", type=float, default=0.0,
                   help="ramp -b linearly over W epochs: beta * min(epoch / W, 1) (DKD/ReviewKD/OFD: 20)")
    g.add_argument("--div_warmup", type=float, default=0.0,
                   help="ramp -d linearly over W epochs: div * min(epoch / W, 1)")
    g.add_argument("--init_epochs", type=int, default=30,
                   help="epochs of a method's init stage (FitNet: 0, RepDistiller's joint training)")
    g.add_argument("--skip-validation", "--skip_validation", dest="skip_validation", action="store_true",
                   help="do not evaluate the teacher before training")
    g = p.add_argument_group("method options (RepDistiller/SemCKD/SimKD)")
    g.add_argument("--hint_layer", type=int, default=2,
                   help="FitNet: index into the stage features (RepDistiller: 2; SemCKD: 1)")
    g.add_argument("--feat_dim", type=int, default=128, help="CRD/CC embedding dimension")
    g.add_argument("--mode", default="exact", choices=("exact", "relax"), help="CRD positives")
    g.add_argument("--nce_k", type=int, default=16384, help="CRD negatives per anchor")
    g.add_argument("--nce_t", type=float, default=0.07, help="CRD temperature")
    g.add_argument("--nce_m", type=float, default=0.5, help="CRD memory momentum")
    g.add_argument("-f", "--factor", type=int, default=2, help="SimKD projector reduction factor")
    g.add_argument("-s", "--soft", type=float, default=1.0, help="SemCKD attention temperature")
    add_common_args(p, trial_default="1")
    for cls in DISTILLERS.values():
        cls.add_arguments(p)
    return p


def given_dests(parser: argparse.ArgumentParser, argv) -> set:
    """The option names (dests) the command line set explicitly."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(argv)[0]))


def parse_option(argv=None):
    parser = build_parser()
    opt = parser.parse_args(argv)
    if opt.model_s not in model_dict:
        raise ConfigError(f"unknown --model_s {opt.model_s!r}; choose one of: {', '.join(sorted(model_dict))}")
    cls = get_distiller_class(opt.distill)
    # a method's own codebase's defaults for the flags the user did not give (FitNet: joint at layer 2)
    given = given_dests(parser, argv)
    for dest, value in cls.defaults.items():
        if dest not in given:
            setattr(opt, dest, value)
    opt.method_defaults = sorted(k for k in cls.defaults if k not in given)
    if opt.kd_mode == "offline" and not opt.path_t:
        raise ConfigError("--path_t is required: give the teacher's checkpoint "
                          "(e.g. save/teachers/models/<model>_vanilla_<dataset>_trial_0/<model>_best.pth), "
                          "or use --kd_mode self|online")
    if opt.kd_mode == "online" and not (opt.path_t or opt.model_t):
        raise ConfigError("--kd_mode online needs a peer: --model_t <name> (fresh) or --path_t <checkpoint>")
    if opt.cls == 0 and opt.div == 0 and opt.beta == 0:
        raise ConfigError("-c, -d and -b are all 0: there is no loss to train with")
    if opt.optimizer == "dot" and opt.cls == 0:
        raise ConfigError("--optimizer dot gives the cross-entropy and the distillation gradients their own "
                          "momentum: it needs -c > 0")
    for name in ("beta_warmup", "div_warmup"):
        if getattr(opt, name) < 0:
            raise ConfigError(f"--{name} {getattr(opt, name)}: give a number of epochs >= 0")
    finish_common(opt, opt.model_s)
    return opt


def method_tag(opt) -> str:
    """The ``--distill`` part of a run's folder name: the method, plus what the loop options make of it
    (``+LS`` logit standardisation, ``+DOT`` the DOT optimiser, ``+RA`` a strongly augmented second
    view), plus a non-offline ``--kd_mode``: KD and KD+LS with the same weights and trial must not share a
    folder. RepDistiller's names are unchanged for runs without these options."""
    tag = opt.distill
    tag += "+LS" if getattr(opt, "logit_stand", False) else ""
    tag += "+DOT" if getattr(opt, "optimizer", "sgd") == "dot" else ""
    tag += "+RA" if (getattr(opt, "strong_aug", None) or "none") != "none" else ""
    return tag if opt.kd_mode == "offline" else f"{tag}-{opt.kd_mode}"


def name_run(opt, teacher_arch: str) -> None:
    distill = method_tag(opt)
    opt.model_t = teacher_arch
    opt.model_name = SPLIT.join(["S", f"{opt.model_s}_T", f"{teacher_arch}_{opt.dataset}_{distill}_r",
                                 f"{opt.cls}_a", f"{opt.div}_b", f"{opt.beta}_{opt.trial}"])
    opt.save_folder = os.path.join(opt.save_dir, "students", "models", opt.model_name)
    opt.tb_folder = os.path.join(opt.save_dir, "students", "tensorboard", opt.model_name)


def make_teacher_model(opt, num_classes):
    """The network that teaches, and its architecture name, for each --kd_mode."""
    if opt.kd_mode == "self":
        return None, opt.model_s, None
    if opt.path_t:
        model, arch, ckpt = build_teacher(opt.path_t, num_classes, opt.model_t, opt.trust_checkpoint)
        return model, arch, ckpt
    if opt.model_t not in model_dict:
        raise ConfigError(f"unknown --model_t {opt.model_t!r}; choose one of: {', '.join(sorted(model_dict))}")
    return model_dict[opt.model_t](num_classes=num_classes), opt.model_t, None


@torch.no_grad()
def probe(model, needs, input_shape, device) -> "Outputs":
    """One forward of a batch of 2 in eval mode: the shapes distillers are built from. Its input comes
    from a generator of its own: probing draws nothing from any random stream of a run."""
    was_training = model.training
    model.eval()
    runner = ModelRunner(model, needs)
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    out = runner(x)
    runner.close()
    model.train(was_training)
    return out


def init_stage_runs(runs, data, device, log) -> None:
    """The init stages of the runs that have one (FitNet/AB/FT/FSP/NST), together: epoch e of every run whose
    ``--init_epochs`` reaches e on the same batches (sample order of its own: data epochs 10,001 ...). Only
    the init parameters train, with their own SGD; the student's other parameters are frozen meanwhile."""
    stages = []
    for run in runs:
        inner, opt = run.inner, run.opt
        params = inner.distiller.init_parameters(inner.student)
        keep = {id(p) for p in params}
        saved = {p: p.requires_grad for p in inner.parameters()}
        for p in inner.parameters():
            p.requires_grad_(id(p) in keep)
        sgd = torch.optim.SGD(params, lr=inner.distiller.init_lr(opt), momentum=opt.momentum,
                              weight_decay=opt.weight_decay)
        stage = Run(opt, inner, sgd, run.teacher, step_module=wrap_ddp(inner, opt, inner_device(inner)),
                    rng=run.rng, label=run.label, layer_key=run.layer_key, wants_contrast=run.wants_contrast,
                    owner=run)
        stages.append((run, stage, saved))
        log(f"{run.label}==> init stage of {opt.distill}: {opt.init_epochs} epochs, "
            f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters")
    for epoch in range(1, max(run.opt.init_epochs for run in runs) + 1):
        active = [(run, stage) for run, stage, _ in stages if run.opt.init_epochs >= epoch and not stage.stopped]
        if not active:
            break
        data.set_epoch(10_000 + epoch)  # its own sample order, independent of the main epochs
        stats = train_one_epoch(epoch, data.train_loader, [st for _, st in active], device, stage="init", log=log)
        for (run, stage), tr in zip(active, stats):
            if tr is None:  # diverged: the run is stopped with it
                continue
            run.logger.print(f"{run.label}init epoch {epoch}/{run.opt.init_epochs} loss {tr['loss']:.4f}")
            run.logger.scalars("init", {"loss": tr["loss"]}, epoch)
    for run, _, saved in stages:
        for p, flag in saved.items():
            p.requires_grad_(flag)
        run.inner.distiller.finish_init()


def inner_device(module) -> torch.device:
    return next(module.parameters()).device


# Options every student of one process shares: one data stream, one teacher, one schedule, one set of speed
# paths and one launcher. train_group.py refuses rows that differ in any of them.
GROUP_KEYS = ("dataset", "data_folder", "download", "train_subset", "batch_size", "num_workers", "loader", "dali",
              "mixup", "no_augment", "data_seed", "epochs", "path_t", "model_t", "kd_mode", "skip_validation",
              "device", "deterministic", "print_freq", "save_dir", "amp", "channels_last", "compile",
              "compile_mode", "multiprocessing_distributed", "dist_url", "dist_backend", "nodes", "node_rank",
              "procs_per_node", "sync_bn")


def stream_options(opts: list, classes: list):
    """The options the one data stream of a group is built from: the shared ones (GROUP_KEYS) and what a
    student asks of the stream: a second view (--strong_aug) and dataset-side CRD negatives (--nce_k,
    --mode, --crd_negatives), from the first student that asks. A student that does not ask ignores them;
    the first view and the order are the same with or without them."""
    data_opt = copy.copy(opts[0])
    strong = [o for o in opts if uses_strong_view(o)]
    if strong:
        data_opt.strong_aug = strong[0].strong_aug
    contrast = [o for o, c in zip(opts, classes) if c.loader_options(o).get("contrast")]
    for key in ("nce_k", "mode", "crd_negatives"):
        if contrast and hasattr(contrast[0], key):
            setattr(data_opt, key, getattr(contrast[0], key))
    return data_opt


def train_students(opts: list, device) -> list:
    """Train the students of ``opts`` (one option set each) against one teacher on one data stream.

    train_student.py trains one; train_group.py several (the rows of a table), paired: every batch is read
    once and the teacher runs once on it, then each student steps, drawing from its own random stream
    (seeded by its --seed) so that it is the experiment a separate run with the same --seed and --data_seed
    would be. Every student is built, and any refused setting reported, before training starts. Returns
    their summaries.
    """
    opt0 = opts[0]
    set_seed(opt0.seed, opt0.deterministic)
    classes = [get_distiller_class(o.distill) for o in opts]
    model_t, t_arch, students, streams = build_models(opts, device)
    data = build_stream(opts, classes, t_arch, tuple(students[0].input_shape), device)
    if opt0.kd_mode == "self":
        model_t = students[0]
    model_t = place(model_t, opt0, device)
    students = [place(st, o, device) for o, st in zip(opts, students)]
    built = build_distillers(opts, classes, students, streams, model_t, data, device)
    teachers = build_teachers(opts, built, model_t, frozenset().union(*(c.needs for c in classes)), device)
    teacher_acc = None
    if opt0.kd_mode == "offline" and not opt0.skip_validation:
        teacher_acc = validate(model_t, data.val_loader, device, opt0)["acc1"]
        if dist_util.is_main():
            print(f"==> teacher {t_arch} test acc@1 {teacher_acc:.2f}", flush=True)
            check_published_accuracy(opt0.path_t, t_arch, opt0.dataset, teacher_acc, lambda m: print(m, flush=True))
    runs = [make_run(i, o, inner, teacher, stream, t_arch, teacher_acc, len(opts))
            for i, (o, inner, teacher, stream) in enumerate(zip(opts, built, teachers, streams))]
    if opt0.compile:  # after every LayerRecorder hook exists and the one-time eager passes are done
        for model in [inner.student for inner in built] + [teachers[0].model]:
            compile_model(model, opt0.compile_mode)
    ready_to_fit(runs, data, device, t_arch)
    mixup = Mixup(opt0.mixup, opt0.data_seed) if opt0.mixup > 0 else None
    summaries = fit(runs, data, device, mixup=mixup, log=runs[0].logger.print)
    for run, summary in zip(runs, summaries):
        if summary["status"] == "finished":
            run.logger.print(f"{run.label}==> best test acc@1 {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
                             f"last {summary['last_acc']:.2f}")
        run.logger.close()
    return summaries


def build_models(opts: list, device):
    """The teacher (built outside every student's random stream) and each student (inside its own),
    fitted to the served input size; every network of a process must take the same images."""
    opt0 = opts[0]
    num_classes = dataset.num_classes(opt0)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        model_t, t_arch, _ = make_teacher_model(opt0, num_classes)  # draws from no student's stream
    streams = [RNGStream(o.seed, device) for o in opts]
    students = []
    for o, stream in zip(opts, streams):
        with stream:
            students.append(model_dict[o.model_s](num_classes=num_classes))
    dataset.fit_models(opt0, *[(o.model_s, st) for o, st in zip(opts, students)], (t_arch, model_t))
    shape = tuple(students[0].input_shape)
    for o, st in zip(opts, students):
        if tuple(st.input_shape) != shape:
            raise ConfigError(f"student {o.model_s} takes {tuple(st.input_shape)} inputs but {opt0.model_s} takes "
                              f"{shape}: the students of a group see the same images")
    if model_t is not None and tuple(model_t.input_shape) != shape:
        raise ConfigError(f"teacher {t_arch} takes {tuple(model_t.input_shape)} inputs but student {opt0.model_s} "
                          f"takes {shape}: pick a pair that sees the same images")
    return model_t, t_arch, students, streams


def build_stream(opts: list, classes: list, t_arch: str, input_shape, device):
    """Name every student's folder (refusing two that would share one), resolve --resume_all, and build the
    one data stream: full batches for all if one method needs them, what any student asks of the loader."""
    opt0 = opts[0]
    drop_last = any(o.drop_last or c.drop_last for o, c in zip(opts, classes))
    loader_kw = {}
    for o, c in zip(opts, classes):
        name_run(o, t_arch)
        o.drop_last = drop_last
        for k, v in c.loader_options(o).items():
            loader_kw[k] = loader_kw.get(k) or v
        last = os.path.join(o.save_folder, f"{o.model_s}_last.pth")
        if getattr(o, "resume_all", False) and not o.resume and os.path.isfile(last):
            o.resume = last  # train_group.py --resume_all: continue where this student stopped
    folders = [o.save_folder for o in opts]
    dup = sorted({f for f in folders if folders.count(f) > 1})
    if dup:
        raise ConfigError(f"two students would write to {dup[0]}: give them distinct --trial names (and --seed N "
                          "to keep their initialisation paired), e.g. --trial uniform_1 --seed 1")
    with dist_util.main_first(opt0.download, opt0.local_rank):  # --download: once, not once per rank
        return dataset.get_dataloaders(stream_options(opts, classes), input_shape, device=device, rank=opt0.rank,
                                       world_size=opt0.world_size, **loader_kw)


def build_distillers(opts: list, classes: list, students: list, streams: list, model_t, data, device) -> list:
    """Each student's distiller, built from one probe of the teacher (with what every method needs) and
    one of the student, inside the student's random stream; returns the trainable units (DistillStudent).
    A refused setting names its row."""
    union = frozenset().union(*(c.needs for c in classes))
    shape = tuple(students[0].input_shape)
    t_probe = probe(model_t, union, shape, device)
    cache: dict = {}
    built = []
    for i, (o, cls, student, stream) in enumerate(zip(opts, classes, students, streams)):
        try:
            ctx = BuildContext(opt=o, s_probe=probe(student, cls.needs, shape, device), t_probe=t_probe,
                               model_s=student, model_t=model_t, num_classes=data.num_classes, n_train=data.n_train,
                               local_batch_size=o.batch_size // o.world_size, train_targets=data.train_targets,
                               device=device, plain_train_images=data.plain_train_images, cache=cache)
            with stream:
                distiller = build_distiller(o.distill, ctx).to(device)
            if distiller.has_loss and o.beta == 0:
                raise ConfigError(f"--distill {o.distill} trains through its own loss, whose weight -b/--beta is 0; "
                                  f"pass -b (published setting: {getattr(cls, 'recommended', '-b 1')})")
        except ConfigError as e:
            raise ConfigError(f"student {i + 1} of {len(opts)} ({getattr(o, 'row', o.distill)}): {e}"
                              if len(opts) > 1 else str(e)) from None
        if not distiller.has_loss and o.beta != 0:
            warnings.warn(f"--distill {o.distill} has no beta term; -b {o.beta} is ignored")
        built.append(place(DistillStudent(student, distiller, o), o, device))
    return built


def build_teachers(opts: list, built: list, model_t, needs, device) -> list:
    """Who teaches each student: one frozen teacher shared by all (recording its layers once per reduction
    the students ask for), or, in a single run, the student's EMA (self) or a peer trained alongside (online)."""
    opt0, first = opts[0], built[0].distiller
    if opt0.kd_mode == "offline":
        views = {transform_key(inner.distiller.layer_transform): inner.distiller.layer_transform for inner in built}
        teachers = [FrozenTeacher(model_t, needs, layer_views=views)] * len(opts)
    elif opt0.kd_mode == "self":
        teachers = [EMATeacher(built[0].student, needs, decay=opt0.self_ema, layer_transform=first.layer_transform)]
    else:
        teachers = [PeerTeacher(model_t, needs, layer_transform=first.layer_transform)]
        teachers[0].wrapped = wrap_ddp(model_t, opt0, device, manual_sync=reduces_own_gradients(opt0))
    teachers[0].strong = any(uses_strong_view(o) for o in opts)
    return teachers


def make_run(i: int, o, inner, teacher, stream, t_arch: str, teacher_acc, n: int) -> TrainRun:
    """Student ``i``'s TrainRun: its logger, its resumed state if any, its distiller's one-time preparation."""
    logger = RunLogger(o.save_folder, o.tb_folder)
    distiller = inner.distiller
    ckpt = load_resume(o, o.model_s) if o.resume else None
    if ckpt is not None:
        inner.student.load_state_dict(ckpt["model"])
        distiller.load_state_dict(ckpt["distiller"])
        teacher.load_state_dict(ckpt.get("teacher"))
    with stream:
        distiller.prepare(logger.print)
    n_extra = sum(p.numel() for p in distiller.parameters() if p.requires_grad) / 1e6
    run = TrainRun(o, inner, None, teacher, logger, save_folder=o.save_folder, prefix=o.model_s, arch=o.model_s,
                   rng=stream, label=f"[{i + 1}/{n} {o.distill} {o.model_s} t{o.trial}] " if n > 1 else "",
                   layer_key=transform_key(distiller.layer_transform),
                   extra_state=lambda: {"teacher": teacher.state_dict(), "distill": o.distill, "teacher_arch": t_arch},
                   summary={"model_s": o.model_s, "model_t": t_arch, "dataset": o.dataset, "distill": o.distill,
                            "kd_mode": o.kd_mode, "trial": o.trial, "seed": o.seed, "data_seed": o.data_seed,
                            "cls": o.cls, "div": o.div, "beta": o.beta, "teacher_acc": teacher_acc,
                            "params_M": count_params(inner.student), "distiller_params_M": n_extra,
                            "role": "student"})
    run.ckpt, run.n_extra = ckpt, n_extra
    return run


def ready_to_fit(runs: list, data, device, t_arch: str) -> None:
    """The init stages still to run, then each run's DDP wrapper, optimiser, restored optimiser/RNG/epoch
    state, and parameters.json."""
    pending = [r for r in runs if r.inner.distiller.init_stage and r.opt.init_epochs > 0
               and not (r.ckpt is not None and r.ckpt.get("init_done", False))]
    if pending:
        init_stage_runs(pending, data, device, runs[0].logger.print)
    for run in runs:
        o = run.opt
        if run.inner.distiller.init_stage and o.init_epochs > 0 and run not in pending:
            run.inner.distiller.finish_init()  # resumed after its init stage
        run.step_module = wrap_ddp(run.inner, o, device, manual_sync=reduces_own_gradients(o))
        run.optimizer = build_optimizer(list(run.inner.parameters()) + list(run.teacher.parameters()), o)
        if run.ckpt is not None:
            run.restore(run.ckpt)
            run.logger.print(f"{run.label}==> resumed from {o.resume} at epoch {run.start_epoch - 1} "
                             f"(best {run.best_acc:.2f})")
        run.logger.print(f"{run.label}==> {o.distill} ({o.kd_mode}): {t_arch} -> {o.model_s} "
                         f"({count_params(run.inner.student):.2f} M params, +{run.n_extra:.2f} M trainable in the "
                         f"distiller) on {o.dataset}, {data.n_train} images, device {device}, world size {o.world_size}")
        run.logger.write_json("parameters.json", {k: v for k, v in vars(o).items()
                                                  if isinstance(v, (int, float, str, bool, list, type(None)))})
        run.ckpt = None


def main_worker(opt, local_rank=None):
    device = dist_util.init(opt, local_rank)
    return train_students([opt], device)[0]


def main(argv=None):
    """Run from the command line or from Python; returns the run's summary dict (single process)."""
    return run_main(main_worker, lambda: parse_option(argv))


if __name__ == "__main__":
    main()
