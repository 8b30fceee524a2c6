"""CKA layer-group distillation (``--distill cka_group``), the method of seeds/001.

Hypothesis: a student whose processing *flow* resembles the teacher's approaches the teacher.
1. Before training, the teacher's L_t x L_t layer CKA matrix is measured on ``--cka_images``
   un-augmented training images in eval mode with the unbiased minibatch estimator (Nguyen et al.
   2021: HSIC_1 sums over batches, divided once), in batches of at least 4 images.
2. The teacher's ordered layers are cut into n contiguous groups by the exact DP of contiguous
   kernel k-means (helper/grouping.py); ``--cka_grouping uniform|random`` are the ablations. The same rule
   is applied again to ``--cka_stability`` bootstrap replicates of the matrix (its batches of images drawn
   with replacement): how often they give the same groups is logged and saved (``stability``).
3. The student's L_s layers are cut into n groups by ``--cka_student_split``: evenly (numpy.array_split
   sizes, the default), at the teacher's relative depths, or with its stem / embedding anchored to a
   teacher group that is the stem / embedding alone; student group i is matched with teacher group i.
4. Every batch: the L_s x L_t CKA matrix C (one unit Gram per layer, one matmul; teacher side
   without grad); CKA_g = reduce(C[S_g, T_g]) over the diagonal block of group g; the loss is the
   weighted mean over groups of (1 - CKA_g). The loop multiplies it by ``-b/--beta``.

Layers are block outputs (models/layers.py). Maps are average-pooled to ``--cka_pool`` x
``--cka_pool`` before the Gram (the same preprocessing for grouping and loss): this bounds the
feature dimension, whose size otherwise pushes the biased estimator towards 1 for any pair
(README, "What the CKA loss sees").

The grouping is made once, from a fixed teacher: ``--kd_mode self|online`` (an untrained, changing
teacher) is refused. Students built against the same teacher in one process (BuildContext.cache) share
the teacher's matrix. Diagnostics (helper/cka_diagnostics.py): the student x teacher matrix, measured
with the teacher's estimator on the same plain images before training, every ``--cka_log_every`` epochs,
at the middle and at the end, drawn beside the teacher's matrix (``cka_matrices.png`` in the run folder,
and TensorBoard), its values and group CKAs in ``cka_matrices.json``.

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
import importlib.util
import json
import os

import numpy as np
import torch

from helper import distributed as dist_util
from helper.cka import MIN_BATCH_UNBIASED, bootstrap_cka, no_autocast, pool_features, unit_grams
from helper.cka_diagnostics import DEFAULT_POOL, cka_figure, figure_rgb, layer_cka, write_png
from helper.grouping import STUDENT_SPLITS, block_cka, check_ends, contiguous_groups, describe_stability, \
    group_objective, grouping_objective_curve, grouping_stability, groups_from_ends, knee_n_groups, random_groups, \
    student_split, uniform_groups
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


def _layer_names(model, count: int) -> list[str]:
    """The model's layer names (models' ``layer_names()``), or "layer i" where it has none."""
    inner = getattr(model, "module", model)
    names = list(inner.layer_names()) if hasattr(inner, "layer_names") else []
    return names if len(names) == count else [f"layer {i}" for i in range(count)]


def _describe_stability(g: dict) -> str:
    """The grouping's bootstrap stability (CKAGroup.stability) for the log line, or ""."""
    st = g.get("stability") or {}
    if not st.get("replicates"):
        return f"; stability not measured ({st['note']})" if st.get("note") else ""
    return "; stability: teacher " + describe_stability(st, g["teacher_ends"], with_n=g.get("n_rule") == "knee")


def _round(m) -> list:
    return [[round(float(v), 6) for v in row] for row in np.asarray(m)]


@register("cka_group")
class CKAGroup(Distiller):
    needs = frozenset({"layers"})
    drop_last = True
    recommended = "-c 1 -d 1 -b 1"

    @classmethod
    def add_arguments(cls, p):
        g = p.add_argument_group("cka_group")
        g.add_argument("--cka_groups", default="auto",
                       help="number of layer groups n (<= min(L_s, L_t)), or 'auto': the knee of the DP objective, "
                            "capped at min(L_s, L_t) (the log and cka_grouping.json say when the cap decided n)")
        g.add_argument("--cka_grouping", default="dp", choices=("dp", "uniform", "random"),
                       help="teacher grouping: exact CKA DP, even split, or random contiguous (ablations)")
        g.add_argument("--cka_student_split", default="even", choices=STUDENT_SPLITS,
                       help="student groups: even (numpy.array_split sizes, first groups larger); proportional "
                            "(cut i at round-half-up(e_i * L_s / L_t) of the teacher's ends e_i, moved so that no "
                            "group is empty); anchored (a teacher group that is the stem alone / the embedding alone "
                            "gets the student's stem alone / embedding alone, the other layers split evenly among "
                            "the other groups; no such teacher group: the even split)")
        g.add_argument("--cka_images", type=int, default=1000,
                       help="un-augmented training images for the teacher's CKA matrix (at least 4)")
        g.add_argument("--cka_stability", type=int, default=200,
                       help="bootstrap replicates (the grouping images' batches drawn with replacement) on which the "
                            "teacher is grouped again by the same rule: how often they give the same groups and "
                            "each cut goes to the log and cka_grouping.json ('stability'); 0: not measured")
        g.add_argument("--cka_estimator", default="unbiased", choices=("unbiased", "biased"),
                       help="per-batch CKA estimator of the loss (the grouping always uses unbiased)")
        g.add_argument("--cka_pool", type=int, default=DEFAULT_POOL,
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
                       help="measure the student x teacher CKA matrix (the teacher's estimator, on the --cka_images "
                            "plain images) before training, every N epochs, at the middle and at the end, and draw "
                            "it beside the teacher's (cka_matrices.png/.json in the run folder, TensorBoard); "
                            "0: none of it")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        mode = getattr(opt, "kd_mode", "offline")
        if mode != "offline":
            refuse(f"cka_group with --kd_mode {mode}: it groups the teacher's layers once, before training, and "
                   f"that teacher ({'the untrained student itself' if mode == 'self' else 'a peer that trains too'}) "
                   "keeps changing, so the groups would describe a network that no longer exists; use --kd_mode "
                   "offline with a trained teacher")
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
        if opt.cka_stability < 0:
            refuse(f"--cka_stability {opt.cka_stability}: give a number of bootstrap replicates, or 0 for none")
        if opt.cka_images < MIN_BATCH_UNBIASED:
            refuse(f"--cka_images {opt.cka_images}: the teacher's CKA matrix (unbiased estimator) needs at least "
                   f"{MIN_BATCH_UNBIASED} images; use hundreds (default 1000)")
        n_max = min(self.L_s, self.L_t)
        if str(opt.cka_groups) != "auto":
            try:
                n = int(opt.cka_groups)
            except ValueError:
                refuse(f"--cka_groups {opt.cka_groups!r}: give an integer or 'auto'")
            if not 1 <= n <= n_max:
                refuse(f"--cka_groups {n}: must be between 1 and min(L_s, L_t) = {n_max} "
                       f"(student {self.L_s} layers, teacher {self.L_t})")
        self.log_every = opt.cka_log_every
        if self.log_every < 0:
            refuse(f"--cka_log_every {self.log_every}: give a number of epochs, or 0 for no CKA figures")
        if self.log_every and importlib.util.find_spec("matplotlib") is None:
            refuse("cka_group draws its CKA figures with matplotlib, which is not installed: pip install matplotlib "
                   "(a dependency of this project), or pass --cka_log_every 0")
        self.n_max = n_max
        self.seed = opt.seed
        self.images = opt.cka_images
        self.save_folder = getattr(opt, "save_folder", None)
        self.names_s = _layer_names(ctx.model_s, self.L_s)
        self.names_t = _layer_names(ctx.model_t, self.L_t)
        # kept as plain attributes (not submodules): the teacher and student are never part of the distiller
        self._model_t, self._model_s = [ctx.model_t], [ctx.model_s]
        self._plain_images = ctx.plain_train_images
        self._cache = ctx.cache
        self._rec_t = self._rec_s = None
        if self.log_every:  # hooked now, before --compile traces the models, and inactive outside a measurement
            key = ("cka_group.teacher_recorder", id(ctx.model_t), self.pool)
            if key not in ctx.cache:
                ctx.cache[key] = LayerRecorder(ctx.model_t, transform=self.layer_transform)
            self._rec_t = ctx.cache[key]
            self._rec_s = LayerRecorder(ctx.model_s, transform=self.layer_transform)
        self.grouping: dict | None = None
        self.measurements: list[dict] = []   # measured student x teacher CKA (diagnostics), saved in the state
        self.register_buffer("_group_sum", torch.zeros(0), persistent=False)  # per-group CKA summed over the epoch
        self._epoch_batches = 0

    # ---- grouping ------------------------------------------------------------------------------
    def get_extra_state(self):
        return None if self.grouping is None else {**self.grouping, "measurements": self.measurements}

    def set_extra_state(self, state):
        if state:
            state = dict(state)
            self.measurements = list(state.pop("measurements", []))
            self.grouping = state

    def _source_key(self):
        src = getattr(self._plain_images, "__self__", self._plain_images)  # the data bundle of a bound method
        return ("cka_group.teacher_cka", id(self._model_t[0]), id(src), self.images, self.pool)

    def teacher_similarity(self) -> dict:
        """The teacher's layer CKA matrix (unbiased minibatch, plain training images, eval mode), with
        the layer names and the number of images. Students built with the same teacher, image source,
        --cka_images and --cka_pool (BuildContext.cache) compute it once."""
        if self._plain_images is None:
            refuse("cka_group needs un-augmented training images for the teacher's CKA matrix, "
                   "but this data pipeline offers none")
        key = self._source_key()
        if key not in self._cache:
            out = layer_cka(self._model_t[0], self._plain_images(self.images), self.pool, rec_t=self._rec_t,
                            keep_batches=True)
            self._cache[key] = {k: out[k] for k in ("teacher", "teacher_layers", "images", "teacher_terms")}
        return self._cache[key]

    def teacher_ends(self, s: np.ndarray) -> tuple[int, int | None, list[int]]:
        """(n, the uncapped knee or None, the teacher's group ends) by this run's rule on similarity ``s``."""
        opt = self.opt
        auto = str(opt.cka_groups) == "auto"
        n, knee = knee_n_groups(s, self.n_max) if auto else (int(opt.cka_groups), None)
        if opt.cka_grouping == "dp":
            t_ends = contiguous_groups(s, n)
        elif opt.cka_grouping == "uniform":
            t_ends = uniform_groups(self.L_t, n)
        else:
            t_ends = random_groups(self.L_t, n, seed=self.seed)
        return n, knee, [int(e) for e in t_ends]

    def stability(self, terms: dict | None, t_ends: list[int]) -> dict | None:
        """The grouping rule applied again to ``--cka_stability`` batch-bootstrap replicates of the teacher's
        matrix (helper.grouping.grouping_stability); None when not asked for or there are no batch terms."""
        if terms is None or not self.opt.cka_stability:
            return None
        if self.opt.cka_grouping != "dp" and str(self.opt.cka_groups) != "auto":
            return {"replicates": 0, "unit": "batch",
                    "note": f"a {self.opt.cka_grouping} cut at a given n does not depend on the grouping images"}
        batches = int(np.shape(terms["cross"])[0])
        if batches < 2:
            return {"replicates": 0, "batches": batches, "unit": "batch",
                    "note": "the grouping images came in one batch: nothing to resample (lower --batch_size)"}
        reps = bootstrap_cka(terms, self.opt.cka_stability, seed=self.seed)
        return {**grouping_stability(reps, t_ends, lambda m: self.teacher_ends(m)[2]), "unit": "batch",
                "batches": batches}

    def choose_grouping(self, sim: np.ndarray, images: int, terms: dict | None = None) -> dict:
        opt = self.opt
        s = np.asarray(sim, dtype=np.float64)
        auto = str(opt.cka_groups) == "auto"
        n, knee, t_ends = self.teacher_ends(s)
        s_ends, anchored = student_split(opt.cka_student_split, self.L_s, t_ends, self.L_t)
        names = lambda ends, nm: [[nm[i] for i in g] for g in groups_from_ends(ends)]  # noqa: E731
        return {"n_groups": n, "n_rule": "knee" if auto else "given", "n_max": self.n_max,
                "n_capped": bool(auto and knee > n), "n_knee_uncapped": knee,
                "grouping": opt.cka_grouping, "teacher_ends": t_ends, "student_ends": s_ends,
                "student_split": opt.cka_student_split, "student_anchored": anchored,
                "teacher_layers": self.names_t, "student_layers": self.names_s,
                "teacher_groups": names(t_ends, self.names_t), "student_groups": names(s_ends, self.names_s),
                "objective": group_objective(s, t_ends),
                "dp_objective_curve": [float(v) for v in grouping_objective_curve(s, self.n_max)],
                "teacher_cka": _round(s), "estimator": "unbiased minibatch (Nguyen et al. 2021)",
                "images": int(images), "pool": self.pool, "loss_estimator": opt.cka_estimator,
                "reduce": self.reduce, "group_weights": str(opt.cka_group_weights),
                "stability": self.stability(terms, t_ends)}

    def _fits(self, g: dict) -> bool:
        """Whether a grouping (and its measurements) from a checkpoint fits these models."""
        try:
            s_ends, t_ends = check_ends(g["student_ends"], self.L_s), check_ends(g["teacher_ends"], self.L_t)
            scalars = [float(g["objective"]), int(g["n_groups"]), str(g["n_rule"])]
            scalars += [float(v) for v in g["dp_objective_curve"]]
            shapes = [np.shape(g["teacher_cka"]) == (self.L_t, self.L_t)] if self.log_every else []
            for m in self.measurements:
                c = m["student_x_teacher"]
                shapes += [isinstance(m["epoch"], int), len(m["group_cka"]) == len(t_ends),
                           c is None or np.shape(c) == (self.L_s, self.L_t)]
        except (KeyError, TypeError, ValueError):
            return False
        return len(s_ends) == len(t_ends) and all(shapes)

    def _check_restored(self, g: dict) -> None:
        """A grouping from a checkpoint must fit these models and the options of this run."""
        if not self._fits(g):
            refuse(f"the checkpoint's cka_group grouping does not fit a {self.L_s}-layer student and a "
                   f"{self.L_t}-layer teacher (or is damaged): resume with the models of that run")
        opt = self.opt
        asked = {"--cka_grouping": (g.get("grouping", "dp"), opt.cka_grouping),
                 "--cka_student_split": (g.get("student_split", "even"), opt.cka_student_split)}
        if str(opt.cka_groups) != "auto":
            asked["--cka_groups"] = (str(len(g["teacher_ends"])), str(int(opt.cka_groups)))
        for flag, (had, want) in asked.items():
            if had != want:
                refuse(f"the checkpoint's cka_group grouping was made with {flag} {had}, this run asks for {want}: "
                       "resume with the run's options, or start a new run")

    def prepare(self, log=print) -> None:
        if self.grouping is None:
            if dist_util.is_main():
                sim = self.teacher_similarity()
                g = self.choose_grouping(sim["teacher"], sim["images"], sim.get("teacher_terms"))
            else:
                g = None
            self.grouping = dist_util.broadcast_object(g)
            source = "computed"
        else:
            self._check_restored(self.grouping)
            source = "restored from the checkpoint"
        g = self.grouping
        self._set_groups(g["student_ends"], g["teacher_ends"])
        if dist_util.is_main():
            log(self._describe(g, source))
            if self.save_folder:
                os.makedirs(self.save_folder, exist_ok=True)
                with open(os.path.join(self.save_folder, "cka_grouping.json"), "w") as f:
                    json.dump(g, f, indent=1)
            if self.log_every and not self.measurements:  # drawn with the first figure of training
                self._measure(0, "start (before training)", keep_matrix=True)

    def _describe(self, g: dict, source: str) -> str:
        """The grouping in one log line, with layer names and how n was chosen."""
        def ranges(ends, names):
            return "[" + " | ".join(f"{names[r.start]}" + (f"..{names[r.stop - 1]}" if len(r) > 1 else "")
                                    for r in groups_from_ends(ends)) + "]"
        names_t, names_s = g.get("teacher_layers", self.names_t), g.get("student_layers", self.names_s)
        if g["n_rule"] == "knee" and g.get("n_capped"):
            how = (f"knee capped at min(L_s, L_t) = {g['n_max']}: the whole curve's knee is "
                   f"{g['n_knee_uncapped']}, so the cap decided n")
        else:
            how = g["n_rule"]
        split = g.get("student_split", "even")
        anchored = g.get("student_anchored") or []
        if split == "anchored" and not anchored:
            split = "anchored split: no teacher group is the stem or the embedding alone, so the even"
        return (f"==> cka_group grouping ({source}): n={g['n_groups']} ({how}), {g['grouping']}: teacher groups "
                f"{ranges(g['teacher_ends'], names_t)} of {self.L_t} layers, student groups ({split} split"
                + (f", {' and '.join(anchored)} anchored" if anchored else "")
                + f") {ranges(g['student_ends'], names_s)} "
                f"of {self.L_s}; objective J={g['objective']:.4f}; J(1..{len(g['dp_objective_curve'])})="
                + ", ".join(f"{v:.3f}" for v in g["dp_objective_curve"]) + _describe_stability(g))

    def _set_groups(self, s_ends, t_ends) -> None:
        n = len(t_ends)
        self.s_groups = groups_from_ends(s_ends)
        self.t_groups = groups_from_ends(t_ends)
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
        device = self._group_sum.device
        self.register_buffer("_mask", mask.to(device), persistent=False)
        self.register_buffer("_w", torch.tensor(self.weights, device=device), persistent=False)
        self._group_sum = torch.zeros(n, device=device)

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
        with no_autocast(g_s.device):  # the unit Grams are float32: keep their product so under --amp
            return g_s.float() @ g_t.float().T

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
            self._group_sum = self._group_sum + per_group.detach()
            self._epoch_batches += 1
        return (self._w * (1.0 - per_group)).sum()

    # ---- diagnostics ---------------------------------------------------------------------------
    def _snapshot_epochs(self) -> dict:
        """Epochs whose measured matrix is kept: the middle and the end of training."""
        epochs = getattr(self.opt, "epochs", None)
        if not epochs:
            return {}
        out = {(epochs + 1) // 2: f"middle (epoch {(epochs + 1) // 2})"} if epochs > 1 else {}
        out[epochs] = f"end (epoch {epochs})"
        return out

    @torch.no_grad()
    def _measure(self, epoch: int, label: str | None, keep_matrix: bool) -> dict:
        """The student x teacher CKA matrix on the plain images (the teacher matrix's estimator and images)
        and its group CKAs; recorded in ``measurements`` (matrix kept for the start, middle and end)."""
        if self._plain_images is None:
            refuse("cka_group's CKA figures need un-augmented training images, but this data pipeline offers "
                   "none: pass --cka_log_every 0")
        from helper.forward import eager_unless  # here: helper.forward imports distiller_zoo
        with eager_unless(False, self.opt):  # compiled models run eagerly here: no graph for these batches
            out = layer_cka(self._model_t[0], self._plain_images(self.images), self.pool, self._model_s[0],
                            rec_t=self._rec_t, rec_s=self._rec_s)
        c = out["student_x_teacher"]
        per = block_cka(c, self.grouping["student_ends"], self.grouping["teacher_ends"], self.reduce)
        rec = {"epoch": epoch, "label": label, "group_cka": [round(v, 6) for v in per],
               "weighted_mean": round(float(np.dot(self.weights, per)), 6), "student_x_teacher": _round(c)}
        self.measurements = [m for m in self.measurements if m["epoch"] != epoch]
        self.measurements.append(rec)
        shown = dict(rec)
        if not keep_matrix:
            rec["student_x_teacher"] = None
        return shown

    def _draw(self, writer, epoch: int, current: dict | None = None) -> None:
        """Figure of the teacher's matrix and the kept student x teacher matrices (and ``current``):
        cka_matrices.png and .json in the run folder, an image in TensorBoard."""
        g = self.grouping
        kept = [m for m in sorted(self.measurements, key=lambda m: m["epoch"]) if m["student_x_teacher"] is not None]
        panels = [(m["label"], m["student_x_teacher"]) for m in kept]
        if current is not None and current["student_x_teacher"] is not None and current["label"] is None:
            panels.append((f"epoch {epoch}", current["student_x_teacher"]))
        title = (f"{getattr(self.opt, 'model_t', 'teacher')} -> {getattr(self.opt, 'model_s', 'student')}: cka_group, "
                 f"n={g['n_groups']}, {g['grouping']} grouping, {g.get('student_split', 'even')} student split "
                 f"(group blocks in red; {g['images']} plain images, maps pooled to {self.pool or 'none'})")
        names = g.get("teacher_layers", self.names_t), g.get("student_layers", self.names_s)
        rgb = figure_rgb(cka_figure(g["teacher_cka"], g["teacher_ends"], panels, g["student_ends"], *names, title))
        if self.save_folder:
            write_png(rgb, os.path.join(self.save_folder, "cka_matrices.png"))
            tmp = os.path.join(self.save_folder, ".cka_matrices.json.tmp")
            with open(tmp, "w") as f:
                json.dump({"teacher_layers": self.names_t, "student_layers": self.names_s,
                           "teacher_ends": g["teacher_ends"], "student_ends": g["student_ends"],
                           "reduce": self.reduce, "pool": self.pool, "images": g["images"],
                           "estimator": "unbiased minibatch (Nguyen et al. 2021), eval mode, plain training images",
                           "teacher_cka": g["teacher_cka"],
                           "measurements": sorted(self.measurements, key=lambda m: m["epoch"])}, f, indent=1)
            os.replace(tmp, os.path.join(self.save_folder, "cka_matrices.json"))
        if writer is not None:
            writer.add_image("cka_group/matrices", rgb, epoch, dataformats="HWC")

    def log_tensorboard(self, writer, epoch: int) -> None:
        if self._epoch_batches and writer is not None:
            mean_group = (self._group_sum / self._epoch_batches).tolist()
            for i, v in enumerate(mean_group):
                writer.add_scalar(f"cka_group/group_{i}", v, epoch)
            writer.add_scalar("cka_group/diag_mean", float(np.dot(self.weights, mean_group)), epoch)
        self._reset_epoch_stats()  # every rank, written or not
        snaps = self._snapshot_epochs()
        due = self.log_every and (epoch % self.log_every == 0 or epoch in snaps)
        if not due or not dist_util.is_main():
            return
        m = self._measure(epoch, snaps.get(epoch), keep_matrix=epoch in snaps)
        if writer is not None:
            for i, v in enumerate(m["group_cka"]):
                writer.add_scalar(f"cka_group/measured_group_{i}", v, epoch)
        self._draw(writer, epoch, m)

    def _reset_epoch_stats(self) -> None:
        self._group_sum = torch.zeros_like(self._group_sum)
        self._epoch_batches = 0
