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
import os
import warnings

import torch

import dataset
from distiller_zoo import DISTILLERS, BuildContext, build_distiller, get_distiller_class
from helper import distributed as dist_util
from helper.checkpoint import SPLIT, build_teacher
from helper.engine import count_params, fit, load_resume, place, restore_common, run_main, \
    wrap_ddp
from helper.errors import ConfigError
from helper.forward import ModelRunner, compile_model
from helper.logger import RunLogger
from helper.loops import DistillStudent, train_one_epoch, validate
from helper.mixup import Mixup
from helper.optim import build_optimizer
from helper.options import add_common_args, finish_common
from helper.pretrained import check_published_accuracy
from helper.teachers import EMATeacher, FrozenTeacher, PeerTeacher
from helper.util import set_seed
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
    g.add_argument("--kd_T", type=float, default=4.0, help="KD temperature")
    g.add_argument("--init_epochs", type=int, default=30, help="epochs of a method's init stage")
    g.add_argument("--skip-validation", "--skip_validation", dest="skip_validation", action="store_true",
                   help="do not evaluate the teacher before training")
    g = p.add_argument_group("method options (RepDistiller/SemCKD/SimKD)")
    g.add_argument("--hint_layer", type=int, default=1, help="FitNet: index into the stage features")
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


def parse_option(argv=None):
    opt = build_parser().parse_args(argv)
    if opt.model_s not in model_dict:
        raise ConfigError(f"unknown --model_s {opt.model_s!r}; choose one of: {', '.join(sorted(model_dict))}")
    get_distiller_class(opt.distill)
    if opt.kd_mode == "offline" and not opt.path_t:
        raise ConfigError("--path_t is required: give the teacher's checkpoint "
                          "(e.g. save/teachers/models/<model>_vanilla_<dataset>_trial_0/<model>_best.pth), "
                          "or use --kd_mode self|online")
    if opt.kd_mode == "online" and not (opt.path_t or opt.model_t):
        raise ConfigError("--kd_mode online needs a peer: --model_t <name> (fresh) or --path_t <checkpoint>")
    if opt.cls == 0 and opt.div == 0 and opt.beta == 0:
        raise ConfigError("-c, -d and -b are all 0: there is no loss to train with")
    finish_common(opt, opt.model_s)
    return opt


def name_run(opt, teacher_arch: str) -> None:
    distill = opt.distill if opt.kd_mode == "offline" else f"{opt.distill}-{opt.kd_mode}"
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
    """One forward of a batch of 2 in eval mode: the shapes distillers are built from."""
    was_training = model.training
    model.eval()
    runner = ModelRunner(model, needs)
    out = runner(torch.randn(2, *input_shape, device=device))
    runner.close()
    model.train(was_training)
    return out


def run_init_stage(opt, inner, step_factory, teacher, data, device, logger):
    """A method's init stage (FitNet/AB/FT/FSP): only its init parameters train, with their own SGD."""
    distiller = inner.distiller
    params = distiller.init_parameters(inner.student)
    keep = {id(p) for p in params}
    saved = {p: p.requires_grad for p in inner.parameters()}
    for p in inner.parameters():
        p.requires_grad_(id(p) in keep)
    init_opt = torch.optim.SGD(params, lr=distiller.init_lr(opt), momentum=opt.momentum,
                               weight_decay=opt.weight_decay)
    step_module = step_factory()
    logger.print(f"==> init stage of {opt.distill}: {opt.init_epochs} epochs, "
                 f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters")
    for epoch in range(1, opt.init_epochs + 1):
        data.set_epoch(10_000 + epoch)  # its own sample order, independent of the main epochs
        tr = train_one_epoch(epoch, data.train_loader, step_module, inner, teacher, init_opt, opt, device,
                             stage="init", log=logger.print)
        logger.print(f"init epoch {epoch}/{opt.init_epochs} loss {tr['loss']:.4f}")
        logger.scalars("init", {"loss": tr["loss"]}, epoch)
    for p, flag in saved.items():
        p.requires_grad_(flag)


def main_worker(opt, local_rank=None):
    device = dist_util.init(opt, local_rank)
    set_seed(opt.seed, opt.deterministic)
    num_classes = dataset.num_classes(opt)
    cls = get_distiller_class(opt.distill)
    student = model_dict[opt.model_s](num_classes=num_classes)
    model_t, t_arch, _ = make_teacher_model(opt, num_classes)
    dataset.fit_models(opt, (opt.model_s, student), (t_arch, model_t))
    if model_t is not None and tuple(model_t.input_shape) != tuple(student.input_shape):
        raise ConfigError(f"teacher {t_arch} takes {tuple(model_t.input_shape)} inputs but student {opt.model_s} "
                          f"takes {tuple(student.input_shape)}: pick a pair that sees the same images")
    name_run(opt, t_arch)
    opt.drop_last = bool(cls.drop_last)
    with dist_util.main_first(opt.download, opt.local_rank):  # --download: once, not once per rank
        data = dataset.get_dataloaders(opt, student.input_shape, device=device, rank=opt.rank,
                                       world_size=opt.world_size, **cls.loader_options(opt))
    student = place(student, opt, device)
    if opt.kd_mode == "self":
        model_t = student
    model_t = place(model_t, opt, device)
    needs = cls.needs
    ctx = BuildContext(opt=opt, s_probe=probe(student, needs, student.input_shape, device),
                       t_probe=probe(model_t, needs, student.input_shape, device), model_s=student,
                       model_t=model_t, num_classes=num_classes, n_train=data.n_train,
                       local_batch_size=opt.batch_size // opt.world_size, train_targets=data.train_targets,
                       device=device, plain_train_images=data.plain_train_images)
    distiller = build_distiller(opt.distill, ctx).to(device)
    if distiller.has_loss and opt.beta == 0:
        raise ConfigError(f"--distill {opt.distill} trains through its own loss, whose weight -b/--beta is 0; "
                          f"pass -b (published setting: {getattr(cls, 'recommended', '-b 1')})")
    if not distiller.has_loss and opt.beta != 0:
        warnings.warn(f"--distill {opt.distill} has no beta term; -b {opt.beta} is ignored")
    inner = place(DistillStudent(student, distiller, opt), opt, device)
    logger = RunLogger(opt.save_folder, opt.tb_folder)

    tf = distiller.layer_transform
    if opt.kd_mode == "offline":
        teacher = FrozenTeacher(model_t, needs, layer_transform=tf)
    elif opt.kd_mode == "self":
        teacher = EMATeacher(student, needs, decay=opt.self_ema, layer_transform=tf)
    else:
        teacher = PeerTeacher(model_t, needs, layer_transform=tf)
        teacher.wrapped = wrap_ddp(model_t, opt, device)
    teacher_acc = None
    if opt.kd_mode == "offline" and not opt.skip_validation:
        teacher_acc = validate(teacher.model, data.val_loader, device, opt)["acc1"]
        logger.print(f"==> teacher {t_arch} test acc@1 {teacher_acc:.2f}")
        check_published_accuracy(opt.path_t, t_arch, opt.dataset, teacher_acc, logger.print)

    ckpt = load_resume(opt, opt.model_s) if opt.resume else None
    if ckpt is not None:
        inner.student.load_state_dict(ckpt["model"])
        distiller.load_state_dict(ckpt["distiller"])
        teacher.load_state_dict(ckpt.get("teacher"))
    distiller.prepare(logger.print)
    if opt.compile:  # after every LayerRecorder hook exists and the one-time eager passes are done
        for model in (inner.student, teacher.model):
            compile_model(model, opt.compile_mode)
    if distiller.init_stage and opt.init_epochs > 0:
        if ckpt is None or not ckpt.get("init_done", False):
            run_init_stage(opt, inner, lambda: wrap_ddp(inner, opt, device), teacher, data, device, logger)
        distiller.finish_init()
    step_module = wrap_ddp(inner, opt, device)
    optimizer = build_optimizer(list(inner.parameters()) + list(teacher.parameters()), opt)
    start_epoch, best_acc, best_epoch = 1, 0.0, 0
    if ckpt is not None:
        start_epoch, best_acc, best_epoch = restore_common(ckpt, optimizer)
        logger.print(f"==> resumed from {opt.resume} at epoch {start_epoch - 1} (best {best_acc:.2f})")
    n_extra = sum(p.numel() for p in distiller.parameters() if p.requires_grad) / 1e6
    logger.print(f"==> {opt.distill} ({opt.kd_mode}): {t_arch} -> {opt.model_s} ({count_params(student):.2f} M "
                 f"params, +{n_extra:.2f} M trainable in the distiller) on {opt.dataset}, {data.n_train} images, "
                 f"device {device}, world size {opt.world_size}")
    logger.write_json("parameters.json", {k: v for k, v in vars(opt).items()
                                          if isinstance(v, (int, float, str, bool, list, type(None)))})
    mixup = Mixup(opt.mixup, opt.seed) if opt.mixup > 0 else None
    summary = fit(opt, inner=inner, step_module=step_module, teacher=teacher, optimizer=optimizer, data=data,
                  device=device, logger=logger, save_folder=opt.save_folder, prefix=opt.model_s, arch=opt.model_s,
                  start_epoch=start_epoch, best_acc=best_acc, best_epoch=best_epoch, mixup=mixup,
                  extra_state=lambda: {"teacher": teacher.state_dict(), "distill": opt.distill,
                                       "teacher_arch": t_arch},
                  summary={"model_s": opt.model_s, "model_t": t_arch, "dataset": opt.dataset,
                           "distill": opt.distill, "kd_mode": opt.kd_mode, "trial": opt.trial,
                           "cls": opt.cls, "div": opt.div, "beta": opt.beta, "teacher_acc": teacher_acc,
                           "params_M": count_params(student), "distiller_params_M": n_extra,
                           "role": "student"})
    logger.print(f"==> best test acc@1 {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
                 f"last {summary['last_acc']:.2f}")
    logger.close()
    return summary


def main(argv=None):
    """Run from the command line or from Python; returns the run's summary dict (single process)."""
    return run_main(main_worker, lambda: parse_option(argv))


if __name__ == "__main__":
    main()
