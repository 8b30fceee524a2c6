"""CRD's memory banks and its negative sampler.

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
N = 1,281,167: matmul 3,971 ms, gather 2,611 ms. Drawing the batch's negatives: see ClassNegativeSampler.
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


NEGATIVES = ("distinct", "iid")
_KEYS_PER_CHUNK = 1 << 24   # uniform keys held at once by the ``keys`` draw (64 MB of float32)


def stream_moments(pool: int, k: int) -> tuple[float, float]:
    """Mean and standard deviation of the number of i.i.d. uniform draws among ``pool`` values until ``k``
    distinct ones have been seen: a sum of geometric waits, the i-th new value taking pool / (pool - i) draws
    on average (variance i pool / (pool - i)^2)."""
    i = torch.arange(k, dtype=torch.float64)
    left = pool - i
    return float((pool / left).sum()), math.sqrt(float((i * pool / left ** 2).sum()))


class ClassNegativeSampler(nn.Module):
    """CRD's contrast indices for a whole batch, drawn on the device: for each anchor ``[pos, neg_1..neg_K]``.

    ``negatives='distinct'`` (default) draws what RepDistiller's ``CIFAR100InstanceSample`` draws per sample,
    ``np.random.choice(cls_negative[y], K, replace=K > len(cls_negative[y]))``: a uniformly random K-subset
    of the P other-class samples, or K i.i.d. draws when P < K. Two exact ways, chosen once from the sizes
    (``via``), with M = P ln(P / (P - K)) the expected number of i.i.d. draws that K distinct ones take:

    * ``keys`` (M > N / 8; CIFAR-100 at K = 16,384: M = 20k, N = 50k): one uniform key per (row, training
      sample), the anchor's class masked, the K largest kept (``topk``). B x N keys, in chunks of rows of at
      most 2^24 keys. Keys are float32 (steps of 2^-24): a tie at the K-th key moves an inclusion
      probability by about 1e-7.
    * ``stream`` (M <= N / 8; ImageNet: M = 16.5k, N = 1.28M, where B x N keys would take 1.3 GB): the
      i.i.d. stream that ``iid`` draws, each repeat skipped until K distinct values are seen (the first K
      distinct values of an i.i.d. uniform sequence are a uniform K-subset). M + 8 std draws per row are
      sorted at once, more while a row is short: one host sync per batch.

    ``negatives='iid'``: K independent uniform draws with replacement, the noise distribution NCE assumes
    (at K = 16,384 of P = 49,500, 15% of the draws repeat a sample). The loss has the same expectation under
    both; its spread over draws is larger under ``iid`` by sqrt((P - 1) / (P - K)), the finite-population
    correction (tests/test_crd_negatives.py checks both against RepDistiller's own draw).

    ``pos``: the anchor itself (``mode='exact'``) or a uniform sample of its class, possibly itself
    (``relax``). Other-class positions are counted in the label-sorted order, skipping the anchor class's
    block. Buffers are not saved: they are rebuilt from the labels. CPU time of one batch on one thread at
    CIFAR-100 sizes (B 64, K 16,384, N 50,000): ``distinct`` 54 ms (keys; stream 120 ms), ``iid`` 21 ms;
    RepDistiller's loader workers spend 39 ms on the batch's 64 ``np.random.choice`` calls.
    """

    def __init__(self, train_targets, k: int, mode: str = "exact", negatives: str = "distinct"):
        super().__init__()
        if mode not in ("exact", "relax"):
            raise ValueError(f"--mode must be 'exact' or 'relax', got {mode!r}")
        if negatives not in NEGATIVES:
            raise ValueError(f"--crd_negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        if int(k) < 1:
            raise ValueError(f"--nce_k must be positive, got {k}")
        targets = torch.as_tensor(train_targets).long().flatten().cpu()
        if targets.numel() == 0 or int(targets.min()) < 0:
            raise ValueError("training labels must be non-negative class indices")
        count = torch.bincount(targets)
        pools = targets.numel() - count[count > 0]      # negatives available to each present class
        if int(pools.min()) <= 0:
            raise ValueError("CRD needs at least two classes in the training set to draw negatives")
        self.k, self.mode, self.negatives, self.n = int(k), mode, negatives, targets.numel()
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("order", torch.argsort(targets, stable=True), persistent=False)
        self.register_buffer("count", count, persistent=False)
        self.register_buffer("start", torch.cumsum(count, 0) - count, persistent=False)
        # which rows draw a K-subset, decided on the host once: no device->host sync to split a batch unless
        # some classes have fewer than K negatives and others not
        subset = pools >= self.k if negatives == "distinct" else torch.zeros_like(pools, dtype=torch.bool)
        self.subsets = "all" if bool(subset.all()) else "some" if bool(subset.any()) else "none"
        self.via, self.stream_len = None, 0
        if self.subsets != "none":
            mean, std = stream_moments(int(pools[subset].min()), self.k)   # the smallest pool: the longest stream
            self.via = "stream" if 8 * mean <= self.n else "keys"
            self.stream_len = int(math.ceil(mean + 8 * std)) + 8

    def draw(self, targets: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None):
        """(B,) labels and dataset indices -> (B, K+1) long indices into the bank."""
        dev = self.order.device
        y, index = targets.to(dev).long(), index.to(dev).long()
        if self.subsets == "all":
            neg = self._subset(y, generator)
        elif self.subsets == "none":
            neg = self._iid(y, generator)
        else:   # RepDistiller's replace rule, row by row
            subset = self.n - self.count[y] >= self.k
            neg = torch.empty(y.numel(), self.k, dtype=torch.long, device=dev)
            neg[subset] = self._subset(y[subset], generator)
            neg[~subset] = self._iid(y[~subset], generator)
        if self.mode == "exact":
            pos = index
        else:
            u = torch.randint(0, 1 << 62, (y.numel(),), generator=generator, device=dev)
            pos = self.order[self.start[y] + u % self.count[y]]
        return torch.cat([pos.unsqueeze(1), neg], 1)

    # ---- the draws --------------------------------------------------------------------------------
    def _positions(self, y, generator, width: int) -> torch.Tensor:
        """(rows, width) i.i.d. uniform positions among each row's N - n_y other-class samples."""
        r = torch.randint(0, 1 << 62, (y.numel(), width), generator=generator, device=y.device)
        return r % (self.n - self.count[y]).unsqueeze(1)

    def _to_index(self, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Other-class positions -> dataset indices: skip the anchor class's block of the sorted order."""
        n_c, start = self.count[y].unsqueeze(1), self.start[y].unsqueeze(1)
        return self.order[r + n_c * (r >= start)]

    def _iid(self, y, generator) -> torch.Tensor:
        return self._to_index(self._positions(y, generator, self.k), y)

    def _subset(self, y, generator) -> torch.Tensor:
        return self._keys(y, generator) if self.via == "keys" else self._stream(y, generator)

    def _keys(self, y, generator) -> torch.Tensor:
        out = torch.empty(y.numel(), self.k, dtype=torch.long, device=y.device)
        step = max(1, _KEYS_PER_CHUNK // self.n)
        for s in range(0, y.numel(), step):
            rows = y[s:s + step]
            keys = torch.rand(rows.numel(), self.n, generator=generator, device=y.device)
            keys.masked_fill_(self.targets.unsqueeze(0) == rows.unsqueeze(1), -1.0)
            out[s:s + step] = keys.topk(self.k, dim=1, sorted=False).indices
        return out

    def _stream(self, y, generator) -> torch.Tensor:
        stream = self._positions(y, generator, self.stream_len)
        while True:
            values, perm = stream.sort(dim=1, stable=True)
            new = torch.ones_like(values, dtype=torch.bool)
            new[:, 1:] = values[:, 1:] != values[:, :-1]
            first = torch.zeros_like(new).scatter_(1, perm, new)   # first occurrence of its value, in stream order
            if bool((first.sum(1) >= self.k).all()):
                break
            stream = torch.cat([stream, self._positions(y, generator, self.stream_len)], 1)
        keep = first & (first.cumsum(1) <= self.k)
        return self._to_index(stream[keep].view(y.numel(), self.k), y)
