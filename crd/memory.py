"""CRD's memory banks and its in-batch negative sampler.

``ContrastMemory`` holds RepDistiller's two banks, one row per training sample: ``memory_s`` (RepDistiller's
``memory_v1``, student embeddings) and ``memory_t`` (``memory_v2``, teacher embeddings), each N x feat_dim,
initialised uniformly in +-1/sqrt(feat_dim/3). For rows ``idx`` (B, K+1), column 0 the positive::

    out_s[b, k] = exp(<memory_t[idx[b, k]], v_s[b]> / T) / Z_s      (student view against the teacher bank)
    out_t[b, k] = exp(<memory_s[idx[b, k]], v_t[b]> / T) / Z_t

Z = mean(exp(...)) * N, fixed from the first batch and kept in the ``Z`` buffer (saved and restored by the
state_dict). It is set without reading anything back to the host: ``Z <- where(Z < 0, new, Z)`` on the first
forward of this object, so a restored Z survives. Update (no grad): ``mem[y] <- l2norm(m mem[y] + (1-m) v)``.

The scores are computed one of two exact ways (``scores=``): ``gather`` is RepDistiller's (copy the B(K+1)
bank rows, then a batched dot product: 2 x B x (K+1) x d floats moved per step); ``matmul`` scores every bank
row once (``v @ memory.T``, B x N) and gathers the scores, cheaper whenever N (d + B) < B (K+1) d (CIFAR:
N = 50,000 against 64 x 16,385). ``auto`` picks by that rule; see ``use_matmul``. Measured on one CPU
thread (B 64, K 16,384, d 128, forward + backward of both views): N = 50,000: matmul 136 ms, gather 2,413 ms;
N = 1,281,167: matmul 3,971 ms, gather 2,611 ms. Drawing the batch's negatives in-batch takes ~20 ms there,
against ~57 ms for 64 per-sample ``np.random.choice`` calls as RepDistiller's loader makes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ContrastMemory(nn.Module):
    def __init__(self, feat_dim: int, n_data: int, T: float = 0.07, momentum: float = 0.5, scores: str = "auto"):
        super().__init__()
        if scores not in ("auto", "matmul", "gather"):
            raise ValueError(f"scores must be auto, matmul or gather, got {scores!r}")
        self.n_data, self.T, self.momentum, self.scores = int(n_data), float(T), float(momentum), scores
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("Z", torch.full((2,), -1.0))   # [Z_s, Z_t]; negative = not set yet
        self._z_checked = False                              # host flag: Z was settled by this object
        self.register_load_state_dict_post_hook(_recheck_z)

    def use_matmul(self, batch: int, width: int) -> bool:
        """``auto``: matmul when it moves fewer bytes. Per bank, the matmul reads the N x d bank and writes
        B x N scores (N (d + B) floats); the gather copies B (K+1) rows of d (B (K+1) d floats); the
        backward pass repeats the same traffic. CIFAR-100 (N 50,000, B 64, K+1 16,385, d 128): 9.6 M vs
        134 M floats; ImageNet (N 1,281,167): 246 M vs 134 M, so the gather."""
        if self.scores != "auto":
            return self.scores == "matmul"
        d = self.memory_s.shape[1]
        return self.n_data * (d + batch) <= batch * width * d

    def similarities(self, v: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``<memory[idx[b, k]], v[b]>`` for every (b, k), in float32: (B, K+1)."""
        v = v.float()
        b, width = idx.shape
        if self.use_matmul(b, width):
            return (v @ memory.t()).gather(1, idx)
        rows = memory.index_select(0, idx.reshape(-1)).view(b, width, memory.shape[1])
        return torch.bmm(rows, v.unsqueeze(2)).squeeze(2)

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor, all_reduce=None):
        """(out_s, out_t), each (B, K+1). ``all_reduce``: sums a tensor over processes in place (the first
        batch's Z is then the global batch's); None on one process."""
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            e_s = torch.exp(self.similarities(v_s, self.memory_t, idx) / self.T)
            e_t = torch.exp(self.similarities(v_t, self.memory_s, idx) / self.T)
            if not self._z_checked:
                self._settle_z(e_s, e_t, all_reduce)
            return e_s / self.Z[0], e_t / self.Z[1]

    @torch.no_grad()
    def _settle_z(self, e_s, e_t, all_reduce):
        stats = torch.stack([e_s.double().sum(), e_t.double().sum(),
                             torch.tensor(float(e_s.numel()), dtype=torch.float64, device=e_s.device)])
        if all_reduce is not None:
            all_reduce(stats)
        z = (stats[:2] / stats[2] * self.n_data).to(self.Z.dtype)
        self.Z.copy_(torch.where(self.Z < 0, z, self.Z))
        self._z_checked = True

    @torch.no_grad()
    def update(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """``mem[index] <- l2norm(m * mem[index] + (1 - m) * v)`` for both banks."""
        m = self.momentum
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            rows = memory.index_select(0, index).mul_(m).add_(v.to(memory.dtype), alpha=1 - m)
            memory.index_copy_(0, index, F.normalize(rows, dim=1))


def _recheck_z(module, incompatible_keys):
    # a loaded Z (set or not) is re-settled on the next forward: kept if set, else taken from that batch
    module._z_checked = False


class ClassNegativeSampler(nn.Module):
    """CRD's contrast indices drawn in the batch, on the device: for each anchor ``[pos, neg_1..neg_K]``.

    ``neg_k``: K independent uniform draws **with replacement** from the samples of the other classes
    (RepDistiller's loader draws a K-subset without replacement; i.i.d. draws are what NCE's noise
    distribution assumes, and at K = 16,384 of 49,500 about 15% of the draws repeat a sample). The training
    labels are sorted by class once; a uniform integer in [0, N - n_c) is mapped around the anchor class's
    block of the sorted order. ``pos``: the anchor itself (``exact``) or a uniform sample of its class,
    possibly itself (``relax``). Buffers are not saved: they are rebuilt from the labels.
    """

    def __init__(self, train_targets, k: int, mode: str = "exact"):
        super().__init__()
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be exact or relax, got {mode!r}")
        targets = torch.as_tensor(train_targets).long().flatten().cpu()
        if targets.numel() == 0 or int(targets.min()) < 0:
            raise ValueError("training labels must be non-negative class indices")
        count = torch.bincount(targets)
        if int((targets.numel() - count[count > 0]).min()) <= 0:
            raise ValueError("CRD needs at least two classes in the training set to draw negatives")
        self.k, self.mode, self.n = int(k), mode, targets.numel()
        self.register_buffer("order", torch.argsort(targets, stable=True), persistent=False)
        self.register_buffer("count", count, persistent=False)
        self.register_buffer("start", torch.cumsum(count, 0) - count, persistent=False)

    def draw(self, targets: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None):
        """(B,) labels and dataset indices -> (B, K+1) long indices into the bank."""
        dev = self.order.device
        targets, index = targets.to(dev).long(), index.to(dev).long()
        n_c = self.count[targets].unsqueeze(1)
        start = self.start[targets].unsqueeze(1)
        r = torch.randint(0, 1 << 62, (targets.numel(), self.k), generator=generator, device=dev)
        r = r % (self.n - n_c)                    # uniform over the N - n_c other-class positions
        r = r + n_c * (r >= start)                # skip the anchor class's block
        neg = self.order[r]
        if self.mode == "exact":
            pos = index
        else:
            u = torch.randint(0, 1 << 62, (targets.numel(), 1), generator=generator, device=dev)
            pos = self.order[start + u % n_c].squeeze(1)
        return torch.cat([pos.unsqueeze(1), neg], 1)
