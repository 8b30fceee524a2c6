"""torch.distributed set-up for both launchers, and the few collectives the loop needs.

Launchers (one code path after :func:`init`):

* ``torchrun`` (env://: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), on one or many nodes::

      torchrun --nproc-per-node 8 train_student.py ...                                # one node
      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host:29400 train_student.py ...

  (under SLURM: one ``srun torchrun ...`` per node).
* ``--multiprocessing-distributed`` (mp.spawn, one process per GPU, as pytorch/examples imagenet and
  SemCKD/SimKD): ``--dist-url tcp://host:port``, ``--world-size`` = number of nodes, ``--rank`` = this
  node's rank; ``--procs_per_node N`` runs N processes (N gloo CPU processes on a machine without GPUs).

NCCL on GPUs (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on CPU. ``--batch_size`` is the
global batch: each of the W processes gets batch_size / W. Outside a process group every helper here is
a cheap no-op, so single-process code paths are the same code.
"""
from __future__ import annotations

import contextlib
import gc
import os
import warnings

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: its functions take ``group=group.WORLD`` as
# a default argument, so a first import after ``init_process_group`` (DDP's constructor imports it,
# through torch._dynamo) keeps that group alive for good, and ``destroy_process_group`` then can no
# longer stop the group's threads (see ``cleanup``).
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401

from helper.errors import ConfigError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init(opt, local_rank: int | None = None) -> torch.device:
    """Join the process group (if this run is distributed) and return this process's device.

    Sets opt.rank, opt.world_size, opt.local_rank, opt.distributed (world size > 1). ``local_rank`` is
    given by mp.spawn (``--multiprocessing-distributed``); torchrun's variables are read from the
    environment. A process group that already exists (a caller that set one up) is joined as it is.
    """
    if is_dist():
        opt.rank, opt.world_size = dist.get_rank(), dist.get_world_size()
        opt.local_rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
        opt.distributed = opt.world_size > 1
        return _device(opt)
    if launched_by_torchrun():
        if getattr(opt, "multiprocessing_distributed", False):
            warnings.warn("started by torchrun: --multiprocessing-distributed is ignored")
        opt.local_rank = int(os.environ["LOCAL_RANK"])
        opt.rank = int(os.environ["RANK"])
        opt.world_size = int(os.environ["WORLD_SIZE"])
        init_method = "env://"
    elif local_rank is not None:  # mp.spawn child
        nprocs = max(int(opt.procs_per_node), 1)
        opt.local_rank = local_rank
        opt.rank = opt.node_rank * nprocs + local_rank
        opt.world_size = opt.nodes * nprocs
        init_method = opt.dist_url
    else:
        opt.local_rank, opt.rank, opt.world_size = 0, 0, 1
        opt.distributed = False
        return _device(opt)
    opt.distributed = opt.world_size > 1
    device = _device(opt)
    backend = opt.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"--dist-backend nccl needs CUDA devices but this process runs on {device}; "
                          "use gloo (the default on CPU)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method=init_method,
                            world_size=opt.world_size, rank=opt.rank)
    return device


def _device(opt) -> torch.device:
    """This process's device, checked: one GPU per process, SyncBatchNorm only on CUDA."""
    name = getattr(opt, "device", "auto") or "auto"
    device = resolve_device(name, opt.local_rank)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
        if opt.world_size > 1 and name not in ("auto", "cuda"):
            raise ConfigError(f"--device {name} puts every one of the {opt.world_size} processes on one GPU; "
                              "use --device cuda (process LOCAL_RANK takes cuda:LOCAL_RANK)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"local rank {opt.local_rank} needs cuda:{device.index} but this node has "
                              f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU")
    if getattr(opt, "sync_bn", False):
        if device.type != "cuda":
            raise ConfigError("--sync_bn needs CUDA (SyncBatchNorm has no CPU implementation): drop it")
        if opt.world_size == 1:
            warnings.warn("--sync_bn has no effect with one process")
    return device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None


def cleanup() -> None:
    """End this process's part of a finished run in order (both launchers, every script).

    The caller has returned from its work and closed its logger (rank 0's files are written), so its
    DDP wrappers are unreferenced. Then: a barrier, so that no rank leaves while another still
    communicates or writes; a garbage collection, which frees DDP wrappers caught in reference cycles;
    ``destroy_process_group``, which then drops the last reference to the group, so that its worker
    threads are joined here, while the interpreter is fully alive.

    Why it matters: a gloo worker thread releases a finished collective's tensors after the caller has
    been woken, and releasing a tensor that has a Python object takes the GIL. A rank with nothing
    left to do (rank 1 while rank 0 writes) reached interpreter shutdown before that; Python 3.11 ends
    a thread that asks for the GIL during shutdown, its C++ frames cannot unwind, and the process
    aborts ("terminate called without an active exception", SIGABRT); the launcher then stops the
    other ranks, rank 0 possibly in the middle of a write. Joining the threads needs the group to be
    freed, hence the import of ``torch.distributed.nn`` at the top of this file.
    """
    if not is_dist():
        return
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_mean(total, count: int) -> float:
    """Global mean of a per-rank (sum, count) pair."""
    t = total.detach().float() if torch.is_tensor(total) else torch.tensor(float(total))
    dev = t.device
    pair = torch.stack([t.reshape(()), torch.tensor(float(count), device=dev)])
    s, n = all_reduce_sum(pair).tolist()
    return s / max(n, 1.0)


def barrier() -> None:
    if is_dist():
        dist.barrier()


@contextlib.contextmanager
def main_first(enabled: bool = True, local_rank: int = 0):
    """Run the block on rank 0 first, then on each node's local rank 0, then on every other rank: a
    dataset download (``--download``) then happens once per file system instead of W times at once into
    the same files. If rank 0 fails inside, the others stay at the barrier until the launcher stops them."""
    if not enabled or not is_dist() or world_size() == 1:
        yield
        return
    if rank() != 0:
        dist.barrier()          # 1: rank 0 done
        if local_rank != 0:
            dist.barrier()      # 2: every node's local rank 0 done
    yield
    if rank() == 0:
        dist.barrier()
    if local_rank == 0:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same(value, what: str) -> None:
    """Raise the same ConfigError on every rank unless ``value`` (picklable) is equal on all of them."""
    if not is_dist() or world_size() == 1:
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise ConfigError(f"{what} differs between ranks (rank 0: {values[0]!r}; rank {odd[0]}: "
                          f"{values[odd[0]]!r}): every process must see the same files")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        # every rank's loss may depend on every rank's rows: sum the gradients over ranks (all-reduce
        # works on gloo and NCCL alike), then keep this rank's rows
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = dist.get_rank()
        return grad[r * ctx.rows:(r + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks in rank order, differentiably.

    If every rank computes the same loss L of the gathered tensor, rank r's rows receive
    ``world_size * dL/dx_r``; DDP's gradient averaging then yields exactly the gradient of L that one
    process holding the whole batch would compute. Identity outside a process group.
    """
    if not is_dist() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x.contiguous())
