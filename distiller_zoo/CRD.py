"""Tian et al. 2020, "Contrastive Representation Distillation" (ICLR).

The penultimate vectors ``feats[-1]`` of student and teacher are embedded (Linear + L2 norm, 128-d, both
heads trainable) and contrasted against two memory banks with the NCE loss of crd/criterion.py; after each
optimiser step the banks take the batch's embeddings (momentum ``--nce_m``). See crd/memory.py.

Negatives: ``--crd_negatives distinct`` (default) draws what RepDistiller's instance-sample dataset draws,
K distinct samples of the other classes per anchor (with replacement only when fewer than K exist);
``iid`` draws K independent uniform samples with replacement. Same expected loss; see crd/memory.py's
ClassNegativeSampler. Where they are drawn (``--crd_sampler``):

* ``batch`` (default): on the device for the whole batch at once, from a generator seeded by
  (``--seed``, draw number), so no per-sample sampling runs in the data loader and a resumed run continues
  the same stream.
* ``dataset``: by the loader, which supplies ``contrast_idx`` (RepDistiller's place for it).
  Whenever a batch carries ``contrast_idx`` it is used.

Distributed (world size > 1): the banks stay identical on every rank. Labels and indices of the global
batch are gathered (rank order) and the negatives of the whole global batch are drawn with the same
generator on every rank, each rank keeping its own rows, so 2 processes x 8 and 1 process x 16 draw the same
negatives; Z is taken from the global first batch (all-reduce); the bank update gathers (index, embeddings)
in rank order; rank 0's initial banks are broadcast once. Every rank must run batches of equal size
(DistributedSampler does).
"""
from __future__ import annotations

import hashlib

import torch

from crd.criterion import CRDLoss, all_gather_rows, all_reduce_sum, broadcast_from_rank0, world
from crd.memory import NEGATIVES, ClassNegativeSampler

from . import register
from .base import Distiller, refuse


def draw_seed(seed: int, draw: int) -> int:
    """A 63-bit generator seed from (run seed, draw number): the same on every rank."""
    digest = hashlib.blake2b(f"crd:{int(seed)}:{int(draw)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@register("crd")
class CRD(Distiller):
    needs = frozenset({"feats"})
    recommended = "-c 1 -d 0 -b 0.8"
    # Buffers this method keeps identical across ranks itself (rank 0's copy broadcast once, then the same
    # gathered updates everywhere). A DDP wrapper may leave them out of its per-forward buffer broadcast
    # (DistributedDataParallel._set_params_and_buffers_to_ignore_for_model), which otherwise re-sends both
    # banks every step: 51 MB on CIFAR, 1.3 GB on ImageNet.
    rank_synced_buffers = ("criterion.memory.memory_s", "criterion.memory.memory_t", "criterion.memory.Z")

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("crd")
        g.add_argument("--crd_sampler", choices=("batch", "dataset"), default="batch",
                       help="where CRD's negatives are drawn: for the whole batch on the device (batch) or by "
                            "the data loader (dataset, RepDistiller's place)")
        g.add_argument("--crd_negatives", choices=NEGATIVES, default="distinct",
                       help="CRD negatives per anchor: K distinct samples of the other classes, as RepDistiller's "
                            "loader draws them (distinct), or K i.i.d. draws with replacement (iid)")
        g.add_argument("--crd_scores", choices=("auto", "matmul", "gather"), default="auto",
                       help="CRD scores: all bank rows by one matmul then gather the scores (matmul), or "
                            "gather the B(K+1) bank rows first (gather, RepDistiller); auto: the one that "
                            "moves fewer bytes (matmul on CIFAR, gather on ImageNet)")

    @classmethod
    def loader_options(cls, opt):
        return {"contrast": getattr(opt, "crd_sampler", "batch") == "dataset"}

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        s_dim = int(ctx.s_probe.feats[-1][0].numel())
        t_dim = int(ctx.t_probe.feats[-1][0].numel())
        self.sampler_kind = getattr(opt, "crd_sampler", "batch")
        self.criterion = CRDLoss(s_dim, t_dim, int(opt.feat_dim), int(ctx.n_train), float(opt.nce_t),
                                 float(opt.nce_m), getattr(opt, "crd_scores", "auto"))
        self.sampler = None
        if self.sampler_kind == "batch":
            if ctx.train_targets is None:
                refuse("crd --crd_sampler batch needs the training labels (BuildContext.train_targets); "
                       "use --crd_sampler dataset with an instance-sample loader")
            if len(ctx.train_targets) != int(ctx.n_train):
                refuse(f"crd: {len(ctx.train_targets)} training labels for {ctx.n_train} training samples")
            try:
                self.sampler = ClassNegativeSampler(ctx.train_targets, int(opt.nce_k), opt.mode,
                                                   getattr(opt, "crd_negatives", "distinct"))
            except ValueError as e:
                refuse(f"crd: {e}")
        seed = getattr(opt, "seed", 0)
        self.seed = 0 if seed is None else int(seed)
        self.draws = 0            # negatives drawn so far (host counter, saved in the state_dict)
        self._gen = None
        self._synced = False      # banks broadcast from rank 0 (once, on the first forward)
        self._pending = []        # (index, v_s, v_t) of forwards not yet written to the banks

    # ---- state: the draw counter travels with the banks ----------------------------------------
    def get_extra_state(self):
        return {"draws": self.draws}

    def set_extra_state(self, state):
        self.draws = int(state.get("draws", 0))

    # ---- negatives -----------------------------------------------------------------------------
    def _generator(self, device) -> torch.Generator:
        device = torch.device(device)
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
        self._gen.manual_seed(draw_seed(self.seed, self.draws))
        self.draws += 1
        return self._gen

    def contrast_indices(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """This rank's (B, K+1) rows of the negatives drawn for the global batch."""
        n, rank = world()
        both = all_gather_rows(torch.stack([targets.long(), index.long()], 1))
        full = self.sampler.draw(both[:, 0], both[:, 1], self._generator(self.sampler.order.device))
        b = targets.shape[0]
        return full[rank * b:(rank + 1) * b]

    # ---- loss and bank update ------------------------------------------------------------------
    def forward(self, s, t, batch):
        if batch.index is None:
            raise RuntimeError("crd needs the dataset indices of the batch (Batch.index)")
        idx = batch.contrast_idx
        if idx is None:
            if self.sampler is None:
                raise RuntimeError("--crd_sampler dataset, but the batch has no contrast_idx: "
                                   "the loader must be the instance-sample one (loader_options)")
            idx = self.contrast_indices(batch.targets, batch.index)
        idx = idx.to(self.criterion.memory.memory_s.device).long()
        n, _ = world()
        if not self._synced:   # ranks may have initialised their banks from different random states
            mem = self.criterion.memory
            broadcast_from_rank0([mem.memory_s, mem.memory_t, mem.Z])
            self._synced = True
        loss, v_s, v_t = self.criterion(s.feats[-1], t.feats[-1], idx, all_reduce_sum if n > 1 else None)
        if self.training:
            self._pending.append((batch.index.detach().long(), v_s.detach(), v_t.detach()))
        return loss

    @torch.no_grad()
    def after_step(self, s, t, batch):
        pending, self._pending = self._pending, []
        for index, v_s, v_t in pending:
            index = all_gather_rows(index)
            v = all_gather_rows(torch.cat([v_s, v_t], 1))
            d = v_s.shape[1]
            self.criterion.memory.update(index.to(v.device), v[:, :d], v[:, d:])
