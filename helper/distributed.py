"""torch.distributed set-up for both launchers, and the few collectives the loop needs.

torchrun (env://: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) or ``--multiprocessing-distributed``
(mp.spawn, one process per GPU, ``--dist-url``, ``--world-size`` = nodes, ``--rank`` = node rank), as in
pytorch/examples imagenet and SemCKD/SimKD. NCCL on GPUs, gloo on CPU. Outside a process group every
helper here is a cheap no-op, so single-process code paths are the same code.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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

    Sets opt.rank, opt.world_size, opt.local_rank, opt.distributed.
    """
    cuda = torch.cuda.is_available() and getattr(opt, "device", "auto") in ("auto", "cuda")
    if launched_by_torchrun():
        opt.local_rank = int(os.environ["LOCAL_RANK"])
        opt.rank = int(os.environ["RANK"])
        opt.world_size = int(os.environ["WORLD_SIZE"])
        init_method = "env://"
    elif local_rank is not None:  # mp.spawn child
        nprocs = max(opt.procs_per_node, 1)
        opt.local_rank = local_rank
        opt.rank = opt.node_rank * nprocs + local_rank
        opt.world_size = opt.nodes * nprocs
        init_method = opt.dist_url
    else:
        opt.local_rank, opt.rank, opt.world_size = 0, 0, 1
        opt.distributed = False
        return resolve_device(opt.device, 0)
    opt.distributed = opt.world_size > 1
    device = resolve_device(opt.device, opt.local_rank)
    backend = opt.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method=init_method,
                            world_size=opt.world_size, rank=opt.rank)
    return device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def cleanup() -> None:
    if is_dist():
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


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
