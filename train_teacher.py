"""Train a network from scratch: teachers, and the vanilla-student baselines of every table.

    python train_teacher.py --model resnet32x4 --dataset cifar100 --data_folder ./data

Saves to save/teachers/models/<model>_vanilla_<dataset>_trial_<trial>/ (ckpt_epoch_<n>.pth,
<model>_best.pth, <model>_last.pth, metrics.jsonl, summary.json) and logs to save/teachers/tensorboard/.
"""
from __future__ import annotations

import argparse
import os

import dataset
from helper import distributed as dist_util
from helper.engine import TrainRun, count_params, fit, load_resume, place, run_main, wrap_ddp
from helper.errors import ConfigError
from helper.forward import compile_model
from helper.logger import RunLogger
from helper.loops import DistillStudent
from helper.mixup import Mixup
from helper.optim import build_optimizer
from helper.options import add_common_args, finish_common
from helper.util import RNGStream, set_seed
from models import model_dict


def parse_option(argv=None):
    p = argparse.ArgumentParser(description="train a model from scratch (RepDistiller's train_teacher.py)")
    p.add_argument("--model", default="resnet110", help="a model_dict name")
    add_common_args(p, trial_default="0")
    opt = p.parse_args(argv)
    if opt.model not in model_dict:
        raise ConfigError(f"unknown --model {opt.model!r}; choose one of: {', '.join(sorted(model_dict))}")
    finish_common(opt, opt.model)
    # the loss is plain CE: the shared loop reads these weights
    opt.cls, opt.div, opt.beta, opt.kd_T, opt.distill = 1.0, 0.0, 0.0, 4.0, None
    opt.model_name = f"{opt.model}_vanilla_{opt.dataset}_trial_{opt.trial}"
    opt.save_folder = os.path.join(opt.save_dir, "teachers", "models", opt.model_name)
    opt.tb_folder = os.path.join(opt.save_dir, "teachers", "tensorboard", opt.model_name)
    return opt


def main_worker(opt, local_rank=None):
    device = dist_util.init(opt, local_rank)
    set_seed(opt.seed, opt.deterministic)
    num_classes = dataset.num_classes(opt)
    stream = RNGStream(opt.seed, device)
    with stream:
        model = model_dict[opt.model](num_classes=num_classes)
    dataset.fit_models(opt, (opt.model, model))
    with dist_util.main_first(opt.download, opt.local_rank):  # --download: once, not once per rank
        data = dataset.get_dataloaders(opt, model.input_shape, device=device, rank=opt.rank,
                                       world_size=opt.world_size)
    inner = place(DistillStudent(model, None, opt), opt, device)
    if opt.compile:
        compile_model(inner.student, opt.compile_mode)
    logger = RunLogger(opt.save_folder, opt.tb_folder)
    run = TrainRun(opt, inner, build_optimizer(inner.parameters(), opt), None, logger,
                   step_module=wrap_ddp(inner, opt, device), rng=stream, save_folder=opt.save_folder,
                   prefix=opt.model, arch=opt.model,
                   summary={"model": opt.model, "dataset": opt.dataset, "trial": opt.trial, "seed": opt.seed,
                            "data_seed": opt.data_seed, "params_M": count_params(model), "role": "vanilla"})
    if opt.resume:
        ckpt = load_resume(opt, opt.model)
        inner.student.load_state_dict(ckpt["model"])
        run.restore(ckpt)
        logger.print(f"==> resumed from {opt.resume} at epoch {run.start_epoch - 1} (best {run.best_acc:.2f})")
    logger.print(f"==> {opt.model} ({count_params(model):.2f} M params) on {opt.dataset}, "
                 f"{data.n_train} training images, device {device}, world size {opt.world_size}")
    logger.write_json("parameters.json", vars(opt) | {"lr_decay_epochs": opt.lr_decay_epochs})
    mixup = Mixup(opt.mixup, opt.data_seed) if opt.mixup > 0 else None
    summary = fit([run], data, device, mixup=mixup, log=logger.print)[0]
    logger.print(f"==> best test acc@1 {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
                 f"last {summary['last_acc']:.2f}")
    logger.close()
    return summary


def main(argv=None):
    """Run from the command line or from Python; returns the run's summary dict (single process)."""
    return run_main(main_worker, lambda: parse_option(argv))


if __name__ == "__main__":
    main()
