"""Command-line flags shared by train_teacher.py and train_student.py (RepDistiller's names and defaults).

Method-specific flags come from each distiller's ``add_arguments``; nothing here names a method.
"""
from __future__ import annotations

import argparse
import os

from helper.errors import ConfigError
from helper.forward import COMPILE_MODES
from helper.optim import OPTIMIZERS, default_lr
from helper.util import parse_int_list, seed_from_trial

DATASETS = ("fashionmnist", "mnist", "digits", "cifar10", "cifar100", "cinic10", "imagenet", "imagefolder",
            "tinyimagenet")


def add_common_args(p: argparse.ArgumentParser, trial_default: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashionmnist", choices=DATASETS,
                   help="dataset (default fashionmnist: Debian's dataset-fashion-mnist package)")
    g.add_argument("--data_folder", default="./data", help="where the dataset's files are")
    g.add_argument("--image_size", type=int, default=None,
                   help="imagefolder/tinyimagenet: side of the served images (default: the model's input size; "
                        "tinyimagenet 64): 32 serves CIFAR-sized models, 224 ImageNet-sized")
    g.add_argument("--mean", default=None, help="imagefolder/tinyimagenet: normalisation mean r,g,b "
                                                "(default: measured on the training images, cached)")
    g.add_argument("--std", default=None, help="imagefolder/tinyimagenet: normalisation std r,g,b (with --mean)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--train_subset", type=int, default=0,
                   help="train on a stratified, seeded subset of N training images (0: all)")
    g.add_argument("--batch_size", type=int, default=64,
                   help="GLOBAL batch size: under DDP each of W processes gets batch_size / W (must divide), "
                        "so steps per epoch, gradients and the LR schedule are those of one process with "
                        "this batch; do not scale --learning_rate with W. Per-process: BatchNorm statistics "
                        "(unless --sync_bn) and batch-statistic losses (see --cka_gather)")
    g.add_argument("--num_workers", type=int, default=8, help="DataLoader workers (torch loader only)")
    g.add_argument("--loader", default="auto", choices=("auto", "torch", "tensor"),
                   help="auto: device-resident tensor loader for in-memory datasets, torch DataLoader otherwise")
    g.add_argument("--dali", default=None, choices=("cpu", "gpu"), help="NVIDIA DALI pipeline (optional package)")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    g.add_argument("--no_augment", action="store_true",
                   help="no training augmentation (crop/flip); images are still shuffled (seeds/000, 004)")
    g.add_argument("--strong_aug", default="none", choices=("none", "randaugment"),
                   help="a second, strongly augmented view of every training image (MLKD's protocol: "
                        "RandAugment(2, 10) + Cutout, per sample); the CE and KD terms are summed over both "
                        "views and a method's own term sees both")
    g.add_argument("--data_seed", type=int, default=None,
                   help="seed of the data stream (subset, order, augmentation, mixup); default: --seed. A group "
                        "(train_group.py) shares one; each student keeps its own --seed for its initialisation")
    g.add_argument("--drop_last", action="store_true",
                   help="drop the last incomplete training batch (methods that need full batches force it; a "
                        "group drops it for all its students if one needs it, and records it)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=240)
    g.add_argument("--learning_rate", type=float, default=None,
                   help="default 0.05, or 0.01 for MobileNet/ShuffleNet (RepDistiller)")
    g.add_argument("--lr_decay_epochs", type=str, default="150,180,210")
    g.add_argument("--lr_decay_rate", type=float, default=0.1)
    g.add_argument("--lr_schedule", default="step", choices=("step", "cosine"))
    g.add_argument("--warmup_epochs", type=float, default=0.0)
    g.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS,
                   help="dot: distillation-oriented trainer (separate CE / distillation momentum, --dot_delta)")
    g.add_argument("--dot_delta", type=float, default=0.075,
                   help="DOT: momentum - delta for the CE gradient, momentum + delta for the distillation one")
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)

    g = p.add_argument_group("run")
    g.add_argument("--trial", type=str, default=trial_default, help="trial id (names the run, sets the seed)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: derived from --trial)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (reproducible)")
    g.add_argument("--resume", type=str, default=None, help="checkpoint to continue from")
    g.add_argument("--trust_checkpoint", action="store_true",
                   help="fully unpickle --path_t/--resume files that a safe (weights-only) load refuses: only for "
                        "files you trust, since unpickling can run any code")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--print_freq", type=int, default=100)
    g.add_argument("--save_freq", type=int, default=40)
    g.add_argument("--save_dir", default="./save", help="root of save/teachers and save/students")
    g.add_argument("--skip_save", action="store_true", help="write no checkpoints (benchmarks)")

    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (teacher in the same precision)")
    g.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the student's and the teacher's forwards (static shapes; the last "
                        "partial batch runs eagerly)")
    g.add_argument("--compile_mode", default="default",
                   choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)")

    g = p.add_argument_group("distributed")
    g.add_argument("--multiprocessing-distributed", dest="multiprocessing_distributed", action="store_true",
                   help="mp.spawn one process per GPU (or --procs_per_node CPU processes) on this node")
    g.add_argument("--dist-url", dest="dist_url", default="tcp://127.0.0.1:23451",
                   help="mp.spawn rendezvous: tcp://<address of node 0>:<free port> (torchrun uses env://)")
    g.add_argument("--dist-backend", dest="dist_backend", default=None, help="nccl (GPU) or gloo (CPU)")
    g.add_argument("--world-size", dest="nodes", type=int, default=1, help="number of nodes (mp.spawn)")
    g.add_argument("--rank", dest="node_rank", type=int, default=0, help="this node's rank (mp.spawn)")
    g.add_argument("--procs_per_node", type=int, default=0,
                   help="processes per node for mp.spawn (default: GPUs on the node)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm for the student (CUDA DDP)")


def finish_common(opt, model_name: str) -> None:
    """Resolve derived options and validate them; errors are one line each."""
    if opt.learning_rate is None:
        opt.learning_rate = default_lr(model_name)
    try:
        opt.lr_decay_epochs = parse_int_list(opt.lr_decay_epochs) if isinstance(opt.lr_decay_epochs, str) \
            else list(opt.lr_decay_epochs)
    except ValueError:
        raise ConfigError(f"--lr_decay_epochs {opt.lr_decay_epochs!r}: give comma-separated integers, "
                          "e.g. 150,180,210") from None
    if opt.seed is None:
        opt.seed = seed_from_trial(opt.trial)
    if opt.data_seed is None:
        opt.data_seed = opt.seed
    if opt.mixup > 0 and opt.strong_aug != "none":
        raise ConfigError("--mixup and --strong_aug cannot be combined (the second view would not be mixed); "
                          "drop one of them")
    if opt.strong_aug != "none" and opt.dali:
        raise ConfigError("--strong_aug is not available with --dali; use --loader tensor or torch")
    if opt.batch_size < 1:
        raise ConfigError(f"--batch_size {opt.batch_size}: must be at least 1")
    if opt.epochs < 1:
        raise ConfigError(f"--epochs {opt.epochs}: must be at least 1")
    if opt.resume and not os.path.isfile(opt.resume):
        raise ConfigError(f"--resume {opt.resume!r}: no such file; give the path of a checkpoint (.pth)")
    opt.rank, opt.world_size, opt.local_rank, opt.distributed = 0, 1, 0, False
