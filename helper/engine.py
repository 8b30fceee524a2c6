"""What train_teacher.py and train_student.py share: launching, the epoch loop, checkpoints, resume.

``launch`` starts one process (plain), N processes (``--multiprocessing-distributed``: mp.spawn) or
joins a torchrun group. ``fit`` runs epochs from ``start_epoch``: train, validate, log, save
``<prefix>_last.pth`` every epoch, ``<prefix>_best.pth`` on a new best and ``ckpt_epoch_<n>.pth`` every
``--save_freq`` epochs, each written atomically by rank 0 only.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

import torch
import torch.multiprocessing as mp
from torch import nn

from helper import distributed as dist_util
from helper.checkpoint import atomic_save, load_file, options_dict
from helper.errors import ConfigError, TrainingDiverged
from helper.loops import Run, train_one_epoch, validate
from helper.util import get_rng_state, set_rng_state


def run_main(worker, opt_or_error):
    """Entry point of both scripts: bad input is one line on stderr and exit code 2.

    Returns the run's summary (summary.json's content) in a single-process run, None otherwise."""
    try:
        opt = opt_or_error() if callable(opt_or_error) else opt_or_error
        return launch(worker, opt)
    except ConfigError as e:
        # torchrun starts every rank with the same arguments: one line, not one per rank
        _print_config_error(e, int(os.environ.get("RANK", 0)) if dist_util.launched_by_torchrun() else 0)
        sys.exit(2)


def _print_config_error(e: ConfigError, rank: int) -> None:
    if rank != 0:
        # usually every rank hits the same bad input: give rank 0's line the time to be the only one
        # (the launcher stops this process meanwhile); an error of this rank alone still gets printed
        time.sleep(2.0)
    print(f"error: {e}", file=sys.stderr, flush=True)


# Test hook (tests/test_distributed.py): KD_TEST_FAIL_AT=<rank>:<step> makes that rank raise at its
# <step>-th training step of ``fit`` (counted from 1 over the run), to check that an error on one rank
# stops every rank with its message instead of leaving the others waiting in a collective.
FAIL_AT_ENV = "KD_TEST_FAIL_AT"


def _exit_failed_rank(e: BaseException) -> None:
    """End this rank of a multi-process run at once: its peers may be blocked in a collective, so a
    normal exit (process-group teardown, atexit) could wait for them. The launcher (torchrun's agent,
    mp.spawn's parent) sees the non-zero exit and stops the other ranks."""
    if isinstance(e, ConfigError):
        _print_config_error(e, dist_util.rank())
        code = 2
    else:
        print(f"rank {dist_util.rank()} failed:", file=sys.stderr)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_worker(worker, opt, local_rank):
    """One rank's whole life: the worker, then the ordered end of the process group
    (:func:`helper.distributed.cleanup`), or on any error the immediate exit of a failed rank."""
    try:
        result = worker(opt, local_rank)
        dist_util.cleanup()
    except BaseException as e:
        if dist_util.is_dist() and dist_util.world_size() > 1:
            _exit_failed_rank(e)
        raise
    return result


def _spawned(local_rank: int, worker, opt) -> None:
    """mp.spawn's child: one rank. A ConfigError is one line and exit code 2."""
    try:
        _run_worker(worker, opt, local_rank)
    except ConfigError as e:  # raised before the process group existed
        _print_config_error(e, opt.node_rank * opt.procs_per_node + local_rank)
        sys.exit(2)


def launch(worker, opt):
    """Run ``worker(opt, local_rank)`` in this process, under torchrun, or in mp.spawn'd processes.

    An exception on any rank of a multi-process run ends that rank with its message (traceback, or the
    ConfigError's one line and exit code 2) and the launcher then stops the others: no rank is left
    waiting in a collective. (With mp.spawn on several nodes, ranks on the *other* nodes only notice
    when the process group times out; torchrun stops all nodes.)
    """
    if getattr(opt, "multiprocessing_distributed", False) and not dist_util.launched_by_torchrun():
        if opt.nodes < 1 or not 0 <= opt.node_rank < opt.nodes:
            raise ConfigError(f"--rank {opt.node_rank} must be a node rank in [0, --world-size {opt.nodes})")
        n = opt.procs_per_node or torch.cuda.device_count()
        if n < 1:
            raise ConfigError("--multiprocessing-distributed found no GPU; pass --procs_per_node N "
                              "to run N CPU processes with gloo")
        opt.procs_per_node = n
        try:
            mp.spawn(_spawned, args=(worker, opt), nprocs=n, join=True)
        except mp.ProcessExitedException as e:
            raise SystemExit(e.exit_code if e.exit_code and e.exit_code > 0 else 1) from None
        except mp.ProcessRaisedException as e:  # the child's traceback, then exit code 1
            print(str(e).strip(), file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        return
    if getattr(opt, "nodes", 1) > 1 and not dist_util.launched_by_torchrun():
        raise ConfigError(f"--world-size {opt.nodes} counts nodes for --multiprocessing-distributed: add that "
                          "flag (with --dist-url and --rank), or start the run with torchrun")
    return _run_worker(worker, opt, None)


class _FailAt:
    """The training loader with the KD_TEST_FAIL_AT fault: rank ``rank`` raises at its ``step``-th step."""

    def __init__(self, loader, rank: int, step: int):
        self.loader, self.rank, self.step, self.done = loader, rank, step, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # anything else a loop may ask of the loader
        return getattr(self.loader, name)

    def __iter__(self):
        for data in self.loader:
            self.done += 1
            if self.done == self.step and dist_util.rank() == self.rank:
                raise RuntimeError(f"{FAIL_AT_ENV}: failure injected on rank {self.rank} at step {self.step}")
            yield data


def _with_fault_hook(loader):
    spec = os.environ.get(FAIL_AT_ENV)
    if not spec:
        return loader
    r, s = (int(v) for v in spec.split(":"))
    return _FailAt(loader, r, s)


def truncate_metrics(save_folder: str, last_epoch: int) -> None:
    """Drop metric lines of epochs after ``last_epoch``: they will be run again (resume), or all of
    them when a run starts afresh in a folder that already holds one."""
    path = os.path.join(save_folder, "metrics.jsonl")
    if not dist_util.is_main() or not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("epoch", 0) <= last_epoch]
    with open(path, "w") as f:
        f.writelines(keep)


def load_resume(opt, expect_arch: str):
    """The checkpoint to continue from, checked to belong to this kind of run."""
    ckpt = load_file(opt.resume, map_location="cpu", trust=getattr(opt, "trust_checkpoint", False))
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in ("epoch", "optimizer", "arch")):
        raise ConfigError(f"--resume {opt.resume!r} is not a checkpoint written by this codebase "
                          "(no arch/epoch/optimizer state); to start from its weights, use it as a teacher instead")
    if ckpt.get("arch") not in (None, expect_arch):
        raise ConfigError(f"--resume {opt.resume!r} holds a {ckpt.get('arch')} but this run trains {expect_arch}")
    # every rank loads the file itself (no broadcast of weights/optimizer state): on several nodes, make
    # sure they all read the same checkpoint
    weights = ckpt.get("model") or {}
    total = sum(float(v.double().sum()) for v in weights.values() if torch.is_tensor(v) and v.is_floating_point())
    dist_util.check_same((int(ckpt["epoch"]), f"{total:.9e}"), f"the checkpoint of --resume {opt.resume!r}")
    return ckpt


class TrainRun(Run):
    """One network trained by :func:`fit`: the loop's :class:`helper.loops.Run` plus its logger, its folder
    and checkpoint bookkeeping (best/last epoch, the summary), all of which only rank 0 writes.

    ``extra_state()`` adds entries to every checkpoint (the distiller's teacher state, names);
    ``summary`` starts summary.json. A run resumed at epoch e has ``start_epoch`` e + 1.
    """

    def __init__(self, opt, inner, optimizer, teacher, logger, *, save_folder: str, prefix: str, arch: str,
                 extra_state=None, summary: dict | None = None, **kw):
        super().__init__(opt, inner, optimizer, teacher, **kw)
        self.logger, self.save_folder, self.prefix, self.arch = logger, save_folder, prefix, arch
        self.extra_state, self.summary = extra_state, dict(summary or {})
        self.start_epoch, self.best_acc, self.best_epoch = 1, 0.0, 0
        self.last: dict = {}
        self.t_start = time.time()

    def restore(self, ckpt: dict) -> None:
        """Optimiser, RNG stream and epoch counters of a resumed run (the weights are loaded by the caller)."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "rng" in ckpt:
            with self.rng:
                set_rng_state(ckpt["rng"])
        self.start_epoch = ckpt["epoch"] + 1
        self.best_acc, self.best_epoch = float(ckpt.get("best_acc", 0.0)), int(ckpt.get("best_epoch", 0))

    def stop(self, reason: str, log=None) -> None:
        """Stop this run (its loss diverged): one line, and the reason in its folder's summary.json; the
        checkpoints of earlier epochs stay."""
        if self.stopped is None:
            epoch = self.last.get("epoch")
            reason += (f" (nothing after epoch {epoch} was saved; its checkpoints stay in {self.save_folder})"
                       if epoch else f" (nothing of this run was saved; folder {self.save_folder})")
        super().stop(reason, self.logger.print)

    def end_epoch(self, epoch: int, tr: dict, val_loader, device) -> None:
        """Validate, log and save after a trained epoch."""
        opt, inner, logger = self.opt, self.inner, self.logger
        distiller = inner.distiller
        inner.eval()  # BatchNorm on its running statistics (train_one_epoch sets train mode again)
        with self.rng:
            val = validate(inner.predict, val_loader, device, opt)
        is_best = self.best_epoch == 0 or val["acc1"] > self.best_acc  # the first epoch is always a best
        if is_best:
            self.best_acc, self.best_epoch = val["acc1"], epoch
        logger.print(f"{self.label}epoch {epoch}/{opt.epochs} train loss {tr['loss']:.4f} acc@1 {tr['acc1']:.2f} | "
                     f"test acc@1 {val['acc1']:.2f} acc@5 {val['acc5']:.2f} loss {val['loss']:.4f} | "
                     f"best {self.best_acc:.2f} | {tr['time']:.1f}s {tr['img_per_s']:.0f} img/s")
        logger.scalars("train", {k: v for k, v in tr.items() if k not in ("time",)}, epoch)
        logger.scalars("test", {k: v for k, v in val.items() if k != "count"}, epoch)
        if distiller is not None:  # every rank: a distiller resets its epoch statistics there too
            distiller.log_tensorboard(logger.writer, epoch)
        self.last = {"epoch": epoch, "train": tr, "test": val}
        logger.epoch({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc1"], "test_acc": val["acc1"],
                      "test_acc_top5": val["acc5"], "test_loss": val["loss"], "lr": tr["lr"],
                      "epoch_time": tr["time"], "img_per_s": tr["img_per_s"],
                      **{k: tr[k] for k in ("loss_cls", "loss_div", "loss_kd") if k in tr}})
        if dist_util.is_main() and not opt.skip_save:
            with self.rng:
                rng = get_rng_state()
            state = {"model": inner.student.state_dict(), "arch": self.arch, "epoch": epoch, "acc": val["acc1"],
                     "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                     "optimizer": self.optimizer.state_dict(),
                     "distiller": distiller.state_dict() if distiller is not None else None,
                     "rng": rng, "opt": options_dict(opt), "init_done": True}
            if self.extra_state:
                state.update(self.extra_state())
            atomic_save(state, os.path.join(self.save_folder, f"{self.prefix}_last.pth"))
            if is_best:
                atomic_save(state, os.path.join(self.save_folder, f"{self.prefix}_best.pth"))
            if opt.save_freq and (epoch % opt.save_freq == 0 or epoch == opt.epochs):
                atomic_save(state, os.path.join(self.save_folder, f"ckpt_epoch_{epoch}.pth"))

    def finish(self) -> dict:
        """summary.json's content (also written): best/last accuracy, epochs, time, and the stop reason of a
        diverged run. A run that had nothing left to train (resumed after its last epoch) keeps its summary."""
        done = os.path.join(self.save_folder, "summary.json")
        if not self.last and not self.stopped and self.start_epoch > self.opt.epochs and os.path.isfile(done):
            with open(done) as f:
                return json.load(f)
        out = dict(self.summary)
        out.update({"best_acc": self.best_acc if self.best_epoch else None, "best_epoch": self.best_epoch,
                    "last_acc": self.last.get("test", {}).get("acc1"), "last_epoch": self.last.get("epoch"),
                    "train_time_s": time.time() - self.t_start,
                    "status": "diverged" if self.stopped else "finished"})
        if self.stopped:
            out["stopped"] = self.stopped
        self.logger.write_json("summary.json", out)
        return out


def fit(runs: list, data, device, mixup=None, log=print) -> list:
    """Train every run from its ``start_epoch`` to ``opt.epochs`` on one data stream; returns their
    summaries (also saved as summary.json). A run that diverges stops alone; when the only run of the
    process diverged, :class:`TrainingDiverged` is raised (one line, exit code 2)."""
    for run in runs:
        truncate_metrics(run.save_folder, run.start_epoch - 1)  # a fresh run in an old folder starts a fresh log
        run.t_start = time.time()
    train_loader = _with_fault_hook(data.train_loader)
    epochs = runs[0].opt.epochs
    for epoch in range(min(r.start_epoch for r in runs), epochs + 1):
        active = [r for r in runs if r.start_epoch <= epoch and not r.stopped]
        if not active:
            break
        data.set_epoch(epoch)  # DistributedSampler.set_epoch: a new order every epoch, the same on every rank
        if mixup is not None:
            mixup.set_epoch(epoch)
        for run, tr in zip(active, train_one_epoch(epoch, train_loader, active, device, log=log, mixup=mixup)):
            if tr is not None:
                run.end_epoch(epoch, tr, data.val_loader, device)
    summaries = [run.finish() for run in runs]
    if len(runs) == 1 and runs[0].stopped:
        raise TrainingDiverged(runs[0].stopped)
    return summaries


class NoSyncDDP(nn.Module):
    """DDP whose forward runs under ``no_sync``: parameters broadcast from rank 0 at construction, buffers
    before every forward, and no gradient reduction by DDP, for an optimiser that averages its gradients
    itself (DOT, helper.optim.reduces_own_gradients)."""

    def __init__(self, ddp: nn.Module):
        super().__init__()
        self.ddp = ddp

    def forward(self, *args, **kwargs):
        with self.ddp.no_sync():
            return self.ddp(*args, **kwargs)


def wrap_ddp(module: nn.Module, opt, device, manual_sync: bool = False):
    """DDP over the trainable module only (the teacher never); SyncBatchNorm first if asked.

    ``static_graph``: the same parameters are used every step, so parameters a configuration never
    uses (a student classifier under SimKD's -c 0 -d 0) need no find_unused_parameters traversal.
    ``manual_sync``: the optimiser averages the gradients over ranks itself (DOT): :class:`NoSyncDDP`.
    """
    if not getattr(opt, "distributed", False):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    if opt.sync_bn:
        if device.type != "cuda":
            raise ConfigError("--sync_bn needs CUDA (SyncBatchNorm has no CPU implementation)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    # buffers a module keeps identical across ranks itself (CRD's memory banks: 51 MB on CIFAR,
    # 1.3 GB on ImageNet) must not be re-broadcast from rank 0 at every forward
    ignore = [f"{prefix}.{b}" if prefix else b for prefix, m in module.named_modules()
              for b in getattr(m, "rank_synced_buffers", ())]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
    ids = [device.index] if device.type == "cuda" else None
    if manual_sync:
        return NoSyncDDP(DDP(module, device_ids=ids))
    return DDP(module, device_ids=ids, static_graph=True)


def place(model: nn.Module, opt, device) -> nn.Module:
    model = model.to(device)
    if getattr(opt, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def count_params(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
