"""CRD's criterion: the two embedding heads, the memory, and the NCE loss ("Eq 18" of Tian et al. 2020).

For P = ``out`` of :class:`crd.memory.ContrastMemory` (B rows of [positive, K negatives]) and the noise
probability Pn = 1/N (uniform over the N training samples)::

    L = -[ sum_b log(P_b0 / (P_b0 + K Pn + eps)) + sum_{b,k>0} log(K Pn / (P_bk + K Pn + eps)) ] / B

applied to the student view and to the teacher view, the two summed (RepDistiller's ``CRDLoss``).
Process-group helpers for the distributed case live here too: the banks must stay identical on every rank.
"""
from __future__ import annotations

import torch
from torch import nn

from models.util import Embed

from .memory import ContrastMemory

EPS = 1e-7


def nce_loss(out: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of one view. ``out``: (B, K+1), column 0 the positive."""
    out = out.float()
    bsz, k = out.shape[0], out.shape[1] - 1
    c = k / float(n_data)                                   # K * Pn
    pos = out[:, 0]
    log_d1 = torch.log(pos / (pos + c + EPS))
    log_d0 = torch.log(c / (out[:, 1:] + c + EPS))
    return -(log_d1.sum() + log_d0.sum()) / bsz


class CRDLoss(nn.Module):
    """Embed both penultimate vectors (Linear + L2 norm, both heads trainable), score them against the
    banks, NCE on both views. ``forward`` returns (loss, v_s, v_t); the caller updates the banks with
    ``memory.update(index, v_s, v_t)`` after the optimiser step."""

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, n_data: int, nce_t: float, nce_m: float,
                 scores: str = "auto"):
        super().__init__()
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, n_data, nce_t, nce_m, scores)

    def forward(self, f_s, f_t, idx, all_reduce=None):
        v_s, v_t = self.embed_s(f_s), self.embed_t(f_t)
        out_s, out_t = self.memory(v_s, v_t, idx, all_reduce)
        n = self.memory.n_data
        return nce_loss(out_s, n) + nce_loss(out_t, n), v_s, v_t


# ---- process group -------------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(world_size, rank); (1, 0) when torch.distributed is not initialised."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks, in rank order. Identity on one process."""
    n, _ = world()
    if n == 1:
        return x
    import torch.distributed as dist
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def all_reduce_sum(x: torch.Tensor) -> None:
    import torch.distributed as dist
    dist.all_reduce(x, op=dist.ReduceOp.SUM)


def broadcast_from_rank0(tensors) -> None:
    """Make ``tensors`` equal to rank 0's on every rank (in place). No-op on one process."""
    n, _ = world()
    if n == 1:
        return
    import torch.distributed as dist
    for x in tensors:
        dist.broadcast(x, src=0)
