"""CKA layer-group distillation (``--distill cka_group``), the method of seeds/001.

Hypothesis: a student whose processing *flow* resembles the teacher's approaches the teacher.
1. Before training, the teacher's L_t x L_t layer CKA matrix is measured on ``--cka_images``
   un-augmented training images in eval mode with the unbiased minibatch estimator (Nguyen et al.
   2021: HSIC_1 sums over batches, divided once).
2. The teacher's ordered layers are cut into n contiguous groups by the exact DP of contiguous
   kernel k-means (helper/grouping.py); ``--cka_grouping uniform|random`` are the ablations.
3. The student's L_s layers are split evenly into n groups (numpy.array_split sizes); student
   group i is matched with teacher group i.
4. Every batch: the L_s x L_t CKA matrix C (one unit Gram per layer, one matmul; teacher side
   without grad); CKA_g = reduce(C[S_g, T_g]) over the diagonal block of group g; the loss is the
   weighted mean over groups of (1 - CKA_g). The loop multiplies it by ``-b/--beta``.

Layers are block outputs (models/layers.py). Maps are average-pooled to ``--cka_pool`` x
``--cka_pool`` before the Gram (the same preprocessing for grouping and loss): this bounds the
feature dimension, whose size otherwise pushes the biased estimator towards 1 for any pair
(README, "What the CKA loss sees").

Under DDP each rank computes the CKA of its local batch (batch_size / world_size) unless ``--cka_gather``.
CKA is a batch statistic, so that is a different estimator from the single-process one: the mean over
ranks of per-rank CKAs is not the CKA of the global batch, its variance grows as the per-rank batch
shrinks, and the biased (HSIC_0) estimator's bias, O(1/batch), grows with it (the unbiased HSIC_1 estimate
is unbiased for HSIC, though the CKA ratio keeps a small bias). ``--cka_gather`` all-gathers the (pooled)
layer features, with gradients for the student's (helper.distributed.all_gather_with_grad), so every rank
computes the CKA of the global batch; DDP's gradient averaging then gives the single-process gradient
(tests/test_distributed.py checks 2 x 8 against 1 x 16). The gather costs one all-gather of the pooled
layers per step, and an all-reduce of their gradients.
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import torch

from helper import distributed as dist_util
from helper.cka import MIN_BATCH_UNBIASED, MinibatchCKA, pool_features, unit_grams
from helper.grouping import choose_n_groups, contiguous_groups, even_split, group_objective, \
    grouping_objective_curve, random_groups, uniform_groups
from models.layers import LayerRecorder

from . import register
from .base import Distiller, refuse


def _gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order (autograd-aware for the student's side)."""
    if not dist_util.is_dist() or dist_util.world_size() == 1:
        return x
    if with_grad:
        return dist_util.all_gather_with_grad(x)
    parts = [torch.empty_like(x) for _ in range(dist_util.world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _heatmap(m: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 image of a matrix in [0, 1] (black -> red -> yellow -> white), no matplotlib."""
    v = np.clip(m, 0.0, 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)])
    scale = max(1, 256 // max(m.shape))
    return (np.kron(rgb, np.ones((1, scale, scale))) * 255).astype(np.uint8)


@register("cka_group")
class CKAGroup(Distiller):
    needs = frozenset({"layers"})
    drop_last = True
    recommended = "-c 1 -d 1 -b 1"

    @classmethod
    def add_arguments(cls, p):
        g = p.add_argument_group("cka_group")
        g.add_argument("--cka_groups", default="auto",
                       help="number of layer groups n (<= min(L_s, L_t)), or 'auto' (knee of the DP objective)")
        g.add_argument("--cka_grouping", default="dp", choices=("dp", "uniform", "random"),
                       help="teacher grouping: exact CKA DP, even split, or random contiguous (ablations)")
        g.add_argument("--cka_images", type=int, default=1000,
                       help="un-augmented training images for the teacher's CKA matrix")
        g.add_argument("--cka_estimator", default="unbiased", choices=("unbiased", "biased"),
                       help="per-batch CKA estimator of the loss (the grouping always uses unbiased)")
        g.add_argument("--cka_pool", type=int, default=4,
                       help="average-pool every map to at most S x S before the Gram (0: flatten as is)")
        g.add_argument("--cka_reduce", default="mean", choices=("mean", "max", "min"),
                       help="representative CKA of a group's (student x teacher) block")
        g.add_argument("--cka_group_weights", default="uniform",
                       help="'uniform', 'size' (teacher group sizes) or n comma-separated weights")
        g.add_argument("--cka_gather", action="store_true",
                       help="DDP: every rank computes CKA on the global batch (layer features all-gathered, "
                            "with gradients). Without it each rank's CKA sees only its local batch "
                            "(batch_size / world_size): a different, noisier estimate whose bias (biased "
                            "estimator: O(1/batch)) grows as the per-rank batch shrinks")
        g.add_argument("--cka_log_every", type=int, default=5,
                       help="log the student x teacher CKA matrix image to TensorBoard every N epochs")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.L_s = len(ctx.s_probe.layers)
        self.L_t = len(ctx.t_probe.layers)
        self.unbiased = opt.cka_estimator == "unbiased"
        self.pool = opt.cka_pool if opt.cka_pool > 0 else None
        self.layer_transform = functools.partial(pool_features, size=self.pool) if self.pool else None
        self.reduce = opt.cka_reduce
        self.gather = bool(opt.cka_gather)
        b = ctx.local_batch_size * (opt.world_size if self.gather else 1)
        b_min = MIN_BATCH_UNBIASED if self.unbiased else 3
        if b < b_min:
            refuse(f"cka_group sees batches of {b} (per rank{' after gathering' if self.gather else ''}); the "
                   f"{opt.cka_estimator} CKA estimator needs at least {b_min}: raise --batch_size"
                   + ("" if self.gather or opt.world_size == 1 else " or pass --cka_gather"))
        n_max = min(self.L_s, self.L_t)
        if str(opt.cka_groups) != "auto":
            try:
                n = int(opt.cka_groups)
            except ValueError:
                refuse(f"--cka_groups {opt.cka_groups!r}: give an integer or 'auto'")
            if not 1 <= n <= n_max:
                refuse(f"--cka_groups {n}: must be between 1 and min(L_s, L_t) = {n_max} "
                       f"(student {self.L_s} layers, teacher {self.L_t})")
        self.n_max = n_max
        self.seed = opt.seed
        self.images = opt.cka_images
        self.log_every = opt.cka_log_every
        self.save_folder = getattr(opt, "save_folder", None)
        # kept as plain attributes (not submodules): the teacher is never part of the distiller
        self._model_t = [ctx.model_t]
        self._plain_images = ctx.plain_train_images
        self.grouping: dict | None = None
        self.register_buffer("_epoch_sum", torch.zeros(self.L_s, self.L_t), persistent=False)
        self._epoch_batches = 0

    # ---- grouping ------------------------------------------------------------------------------
    def get_extra_state(self):
        return self.grouping

    def set_extra_state(self, state):
        if state:
            self.grouping = state

    @torch.no_grad()
    def teacher_similarity(self) -> torch.Tensor:
        """Unbiased minibatch CKA matrix of the teacher's layers on un-augmented training images."""
        if self._plain_images is None:
            refuse("cka_group needs un-augmented training images for the teacher's CKA matrix, "
                   "but this data pipeline offers none")
        model_t = self._model_t[0]
        was_training = model_t.training
        model_t.eval()
        acc, rec = MinibatchCKA(), LayerRecorder(model_t)
        try:
            for x in self._plain_images(self.images):
                if x.size(0) < MIN_BATCH_UNBIASED:
                    continue
                with rec:
                    model_t(x)
                acc.update([pool_features(f, self.pool) for f in rec.layers])
        finally:
            rec.remove()
            model_t.train(was_training)
        return acc.compute().float().cpu()

    def choose_grouping(self, sim: torch.Tensor) -> dict:
        opt = self.opt
        s = sim.double().numpy()
        auto = str(opt.cka_groups) == "auto"
        n = choose_n_groups(s, n_max=self.n_max) if auto else int(opt.cka_groups)
        if opt.cka_grouping == "dp":
            t_ends = contiguous_groups(s, n)
        elif opt.cka_grouping == "uniform":
            t_ends = uniform_groups(self.L_t, n)
        else:
            t_ends = random_groups(self.L_t, n, seed=self.seed)
        return {"n_groups": n, "n_rule": "knee" if auto else "given", "grouping": opt.cka_grouping,
                "teacher_ends": [int(e) for e in t_ends], "student_ends": even_split(self.L_s, n),
                "objective": group_objective(s, t_ends),
                "dp_objective_curve": [float(v) for v in grouping_objective_curve(s, self.n_max)],
                "teacher_cka": [[round(float(v), 6) for v in row] for row in s],
                "estimator": "unbiased minibatch (Nguyen et al. 2021)", "images": self.images,
                "pool": self.pool, "loss_estimator": opt.cka_estimator}

    def prepare(self, log=print) -> None:
        if self.grouping is None:
            g = self.choose_grouping(self.teacher_similarity()) if dist_util.is_main() else None
            self.grouping = dist_util.broadcast_object(g)
            source = "computed"
        else:
            source = "restored from the checkpoint"
        g = self.grouping
        self._set_groups(g["student_ends"], g["teacher_ends"])
        if dist_util.is_main():
            log(f"==> cka_group grouping ({source}): n={g['n_groups']} ({g['n_rule']}), {g['grouping']}: "
                f"teacher groups {self._ranges(g['teacher_ends'])} of {self.L_t} layers, student groups "
                f"{self._ranges(g['student_ends'])} of {self.L_s}; objective J={g['objective']:.4f}; "
                f"J(1..{self.n_max})=" + ", ".join(f"{v:.3f}" for v in g["dp_objective_curve"]))
            if self.save_folder:
                os.makedirs(self.save_folder, exist_ok=True)
                with open(os.path.join(self.save_folder, "cka_grouping.json"), "w") as f:
                    json.dump(g, f, indent=1)

    @staticmethod
    def _ranges(ends):
        starts = [0] + list(ends[:-1])
        return "[" + ", ".join(f"{a}-{b - 1}" for a, b in zip(starts, ends)) + "]"

    def _set_groups(self, s_ends, t_ends) -> None:
        n = len(t_ends)
        self.s_groups = [range(a, b) for a, b in zip([0] + list(s_ends[:-1]), s_ends)]
        self.t_groups = [range(a, b) for a, b in zip([0] + list(t_ends[:-1]), t_ends)]
        spec = str(self.opt.cka_group_weights)
        if spec == "uniform":
            w = [1.0] * n
        elif spec == "size":
            w = [float(len(g)) for g in self.t_groups]
        else:
            try:
                w = [float(v) for v in spec.split(",")]
            except ValueError:
                refuse(f"--cka_group_weights {spec!r}: use uniform, size or {n} comma-separated numbers")
            if len(w) != n or min(w) < 0 or sum(w) <= 0:
                refuse(f"--cka_group_weights {spec!r}: need {n} non-negative weights with a positive sum")
        total = sum(w)
        self.weights = [v / total for v in w]
        # (L_s, L_t) mask of each group's diagonal block, used by every step's reduction
        mask = torch.zeros(n, self.L_s, self.L_t)
        for i, (sg, tg) in enumerate(zip(self.s_groups, self.t_groups)):
            mask[i, sg.start:sg.stop, tg.start:tg.stop] = 1.0
        self.register_buffer("_mask", mask.to(self._epoch_sum.device), persistent=False)
        self.register_buffer("_w", torch.tensor(self.weights, device=self._epoch_sum.device), persistent=False)
        self._group_sum = torch.zeros(n, device=self._epoch_sum.device)

    # ---- loss ----------------------------------------------------------------------------------
    def cka(self, s_layers, t_layers) -> torch.Tensor:
        """(L_s, L_t) CKA matrix of one batch; gradients reach the student's layers only."""
        s = [_gather(pool_features(f, self.pool), True) if self.gather else pool_features(f, self.pool)
             for f in s_layers]
        with torch.no_grad():
            t = [pool_features(f, self.pool) for f in t_layers]
            t = [_gather(f, False) for f in t] if self.gather else t
            g_t = unit_grams(t, unbiased=self.unbiased)
        g_s = unit_grams(s, unbiased=self.unbiased)
        return g_s @ g_t.T

    def group_cka(self, c: torch.Tensor) -> torch.Tensor:
        """Representative CKA of each group's diagonal block: (n,)."""
        if self.reduce == "mean":
            return (c.unsqueeze(0) * self._mask).sum(dim=(1, 2)) / self._mask.sum(dim=(1, 2))
        fill = float("-inf") if self.reduce == "max" else float("inf")
        blocks = torch.where(self._mask.bool(), c.unsqueeze(0).expand_as(self._mask), torch.full_like(self._mask, fill))
        flat = blocks.flatten(1)
        return flat.amax(dim=1) if self.reduce == "max" else flat.amin(dim=1)

    def forward(self, s, t, batch):
        if self.grouping is None:
            raise RuntimeError("cka_group used before prepare(): the training script runs it once before training")
        c = self.cka(s.layers, t.layers)
        per_group = self.group_cka(c)
        with torch.no_grad():
            self._epoch_sum += c.detach()
            self._group_sum = self._group_sum + per_group.detach()
            self._epoch_batches += 1
        return (self._w * (1.0 - per_group)).sum()

    # ---- diagnostics ---------------------------------------------------------------------------
    def log_tensorboard(self, writer, epoch: int) -> None:
        if self._epoch_batches == 0:
            return
        if writer is None:  # ranks other than 0: nothing to write, only the reset below
            self._reset_epoch_stats()
            return
        mean_group = (self._group_sum / self._epoch_batches).tolist()
        for i, v in enumerate(mean_group):
            writer.add_scalar(f"cka_group/group_{i}", v, epoch)
        mean_c = (self._epoch_sum / self._epoch_batches).cpu().numpy()
        writer.add_scalar("cka_group/diag_mean", float(np.dot(self.weights, mean_group)), epoch)
        if self.log_every and (epoch % self.log_every == 0 or epoch == 1):
            writer.add_image("cka_group/student_x_teacher", _heatmap(mean_c), epoch, dataformats="CHW")
        self._reset_epoch_stats()

    def _reset_epoch_stats(self) -> None:
        self._epoch_sum.zero_()
        self._group_sum = torch.zeros_like(self._group_sum)
        self._epoch_batches = 0
