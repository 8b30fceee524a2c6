"""CKA diagnostics of a teacher and a student: layer CKA matrices measured on plain images, the group CKAs
of a cka_group grouping, and the figure that cka_group and scripts/cka_matrix.py draw.

One measure everywhere: the unbiased minibatch CKA (helper.cka.MinibatchCKA) on un-augmented images,
both networks in eval mode, every map average-pooled as the loss pools it. cka_group groups the teacher
with it and draws its figures with it, and `group_cka` applies it to any student checkpoint (a kd
student, a cka_group student) against a grouping, so group-CKA curves of different methods compare.

Figures use matplotlib (a dependency of the project, Agg backend, imported when a figure is drawn).
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
import torch

from helper.cka import MIN_BATCH_UNBIASED, MinibatchCKA, pool_features
from helper.errors import ConfigError
from helper.grouping import block_cka, check_ends, groups_from_ends
from models.layers import LayerRecorder

DEFAULT_POOL = 4  # cka_group's --cka_pool default

__all__ = ["DEFAULT_POOL", "batches_of_at_least", "layer_cka", "group_cka", "load_grouping", "check_grouping",
           "cka_figure", "figure_rgb", "write_png"]


def batches_of_at_least(batches: Iterable[torch.Tensor], k: int = MIN_BATCH_UNBIASED):
    """Regroup image batches so that each has >= k images: small batches are merged, and a last
    remainder of fewer than k images joins the batch before it (nothing is dropped)."""
    buf, count, ready = [], 0, None
    for x in batches:
        buf.append(x)
        count += x.size(0)
        if count >= k:
            if ready is not None:
                yield ready
            ready, buf, count = torch.cat(buf), [], 0
    if buf:
        rest = torch.cat(buf)
        ready = rest if ready is None else torch.cat([ready, rest])
    if ready is not None:
        yield ready


def _recorder(model, pool, recorder):
    return recorder if recorder is not None else LayerRecorder(model, transform=lambda f: pool_features(f, pool))


@torch.no_grad()
def layer_cka(model_t, images: Iterable[torch.Tensor], pool: int | None = None, model_s=None,
              rec_t: LayerRecorder | None = None, rec_s: LayerRecorder | None = None,
              keep_batches: bool = False) -> dict:
    """Unbiased minibatch CKA of the teacher's layers with each other and, with ``model_s``, of the
    student's layers against the teacher's, over the image batches ``images``.

    Each model runs in eval mode (its mode is restored after). Batches are regrouped to >= 4 images,
    the estimator's minimum. ``rec_t``/``rec_s``: recorders already hooked on the models with this
    pooling (cka_group keeps them from before ``--compile``); otherwise hooks are added and removed.
    Returns ``teacher`` (L_t, L_t) and ``student_x_teacher`` (L_s, L_t) or None as float64 arrays,
    ``teacher_layers``/``student_layers`` (names) and ``images`` (how many were used); with
    ``keep_batches`` also ``teacher_terms``, the teacher matrix's per-batch terms (MinibatchCKA.batch_terms,
    for helper.cka.bootstrap_cka).
    """
    models = [(model_t, _recorder(model_t, pool, rec_t))]
    if model_s is not None:
        models.append((model_s, _recorder(model_s, pool, rec_s)))
    modes = [m.training for m, _ in models]
    tt, st = MinibatchCKA(keep_batches=keep_batches), MinibatchCKA()
    try:
        for m, _ in models:
            m.eval()
        for x in batches_of_at_least(images):
            if x.size(0) < MIN_BATCH_UNBIASED:
                raise ConfigError(f"the CKA measurement got only {x.size(0)} images; it needs at least "
                                  f"{MIN_BATCH_UNBIASED} (raise --cka_images / --images)")
            feats = []
            for m, rec in models:
                with rec:
                    m(x)
                feats.append(rec.layers)
            tt.update(feats[0])
            if model_s is not None:
                st.update(feats[1], feats[0])
    finally:
        for (m, rec), mode in zip(models, modes):
            m.train(mode)
        for (_, rec), given in zip(models, (rec_t, rec_s)):
            if given is None:
                rec.remove()
    if tt.num_batches == 0:
        raise ConfigError("the CKA measurement got no images: the image source is empty")
    return {"teacher": tt.compute().cpu().numpy(),
            "student_x_teacher": st.compute().cpu().numpy() if model_s is not None else None,
            "teacher_layers": models[0][1].names, "student_layers": models[1][1].names if model_s is not None else None,
            "images": tt.num_examples, "teacher_terms": tt.batch_terms() if keep_batches else None}


def load_grouping(path: str) -> dict:
    """A cka_group grouping (``cka_grouping.json``), checked: teacher_ends and student_ends (lists of
    group ends, as many of each), pool (int or null) and reduce (mean/max/min) if present."""
    try:
        with open(path) as f:
            g = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the grouping {path!r}: {e}; give a cka_group run's cka_grouping.json") from None
    if not isinstance(g, dict):
        raise ConfigError(f"{path!r} holds no grouping object; give a cka_group run's cka_grouping.json")
    return check_grouping(g, path)


def check_grouping(g: dict, where: str = "the grouping") -> dict:
    """Validate the fields of a grouping dict that a measurement reads; returns it."""
    t, s = g.get("teacher_ends"), g.get("student_ends")
    if not (isinstance(t, list) and isinstance(s, list) and t and len(t) == len(s)):
        raise ConfigError(f"{where}: teacher_ends and student_ends must be lists of as many group ends")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in t + s):
        raise ConfigError(f"{where}: group ends must be integers, got {t} and {s}")
    for ends in (t, s):
        check_ends(ends, ends[-1])
    pool = g.get("pool")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise ConfigError(f"{where}: pool must be a positive integer or null, got {pool!r}")
    if g.get("reduce", "mean") not in ("mean", "max", "min"):
        raise ConfigError(f"{where}: reduce must be mean, max or min, got {g.get('reduce')!r}")
    return g


def group_cka(model_t, model_s, grouping: dict, images: Iterable[torch.Tensor], pool="grouping") -> dict:
    """Group CKAs of any student against a teacher and a cka_group grouping, on plain images.

    The matrix is the unbiased minibatch CKA of `layer_cka`, pooled as the grouping's run pooled (its
    ``pool``; 4, cka_group's default, if it names none) unless ``pool`` is given (None: flattened maps).
    Group i's CKA is the grouping's reduction (default mean) of the block (student group i x teacher
    group i). Returns ``group_cka`` (list), ``mean`` (their unweighted mean), ``student_x_teacher``,
    ``teacher``, the layer names and ``images``.
    """
    check_grouping(grouping)
    l_s, l_t = (len(getattr(m, "module", m).layer_names()) for m in (model_s, model_t))
    if grouping["student_ends"][-1] != l_s or grouping["teacher_ends"][-1] != l_t:
        raise ConfigError(f"the grouping is for {grouping['student_ends'][-1]} student and "
                          f"{grouping['teacher_ends'][-1]} teacher layers, these models have {l_s} and {l_t}: "
                          "use the grouping of this pair")
    pool = grouping.get("pool", DEFAULT_POOL) if pool == "grouping" else pool
    out = layer_cka(model_t, images, pool, model_s)
    per = block_cka(out["student_x_teacher"], grouping["student_ends"], grouping["teacher_ends"],
                    grouping.get("reduce", "mean"))
    return {**out, "group_cka": per, "mean": float(np.mean(per)), "pool": pool}


# ----------------------------------------------------------------------------- the figure

def _norm(values: np.ndarray):
    """A linear colour scale spanning exactly the values shown: their spread fills the colour map, and
    negative values (unbiased CKA of unrelated layers) sit at its dark end, not clipped to 0."""
    from matplotlib import colors

    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return colors.Normalize(vmin=lo, vmax=hi)


def _colorbar(fig, im, axes, fraction, label):
    bar = fig.colorbar(im, ax=axes, fraction=fraction, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if im.norm.vmin < 0 < im.norm.vmax:  # mark zero, the unbiased estimator's chance level
        bar.ax.axhline(0.0, color="white", lw=1.2)


def _ticks(ax, axis: str, names: Sequence[str]) -> None:
    step = max(1, math.ceil(len(names) / 32))
    pos = list(range(0, len(names), step))
    size = 7 if len(names) <= 20 else 5
    if axis == "x":
        ax.set_xticks(pos, [names[i] for i in pos], rotation=90, fontsize=size)
    else:
        ax.set_yticks(pos, [names[i] for i in pos], fontsize=size)


def _panel(ax, m, norm, row_ends, col_ends, row_names, col_names, title, annotate):
    im = ax.imshow(m, norm=norm, cmap="viridis", interpolation="nearest")
    for r, c in zip(groups_from_ends(row_ends), groups_from_ends(col_ends)):
        ax.add_patch(_rect(c.start - 0.5, r.start - 0.5, len(c), len(r), "red"))
    for e in row_ends[:-1]:
        ax.axhline(e - 0.5, color="white", lw=0.6, ls=":")
    for e in col_ends[:-1]:
        ax.axvline(e - 0.5, color="white", lw=0.6, ls=":")
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                dark = norm(m[i, j]) < 0.6
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if dark else "black")
    _ticks(ax, "x", col_names)
    _ticks(ax, "y", row_names)
    ax.set_title(title, fontsize=9)
    return im


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle
    return Rectangle((x, y), w, h, fill=False, ec=color, lw=1.8)


def cka_figure(teacher: np.ndarray, teacher_ends: Sequence[int], panels: Sequence[tuple] = (),
               student_ends: Sequence[int] | None = None, teacher_layers: Sequence[str] | None = None,
               student_layers: Sequence[str] | None = None, title: str = "",
               label: str = "linear CKA (unbiased minibatch)"):
    """A matplotlib Figure: the teacher's (L_t, L_t) CKA matrix with its groups outlined, then one
    (L_s, L_t) panel per ``(caption, matrix)`` of ``panels`` with the matched (student group i x teacher
    group i) blocks outlined; layer names on both axes, dotted lines at group boundaries, values written
    in the cells of matrices of up to 12 x 12. The teacher has its own colour bar, the student panels
    share one; each spans exactly the values it shows (negative values included, zero marked on the bar)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    teacher = np.asarray(teacher, dtype=np.float64)
    l_t = teacher.shape[0]
    names_t = list(teacher_layers or [str(i) for i in range(l_t)])
    mats = [np.asarray(m, dtype=np.float64) for _, m in panels]
    l_s = mats[0].shape[0] if mats else 0
    names_s = list(student_layers or [str(i) for i in range(l_s)])
    cell = 0.32 if l_t <= 20 else 0.2
    h = max(3.2, cell * l_t + 1.8)
    widths = [1.0] + [1.0] * len(mats)
    fig = Figure(figsize=(sum(widths) * max(3.2, cell * l_t + 1.6) + 0.8, h), layout="constrained")
    axes = fig.subplots(1, len(widths), squeeze=False)[0]
    im = _panel(axes[0], teacher, _norm(teacher), teacher_ends, teacher_ends, names_t, names_t,
                f"teacher x teacher ({l_t} layers)", l_t <= 12)
    _colorbar(fig, im, axes[0], 0.046, label)
    axes[0].set_xlabel("teacher layer", fontsize=8)
    axes[0].set_ylabel("teacher layer", fontsize=8)
    if mats:
        norm = _norm(np.concatenate([m.ravel() for m in mats]))
        for ax, (caption, _), m in zip(axes[1:], panels, mats):
            im = _panel(ax, m, norm, student_ends, teacher_ends, names_s, names_t, caption,
                        max(m.shape) <= 12)
            ax.set_xlabel("teacher layer", fontsize=8)
            ax.set_ylabel("student layer", fontsize=8)
        _colorbar(fig, im, list(axes[1:]), 0.046 / len(mats), label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_rgb(fig) -> np.ndarray:
    """Render a Figure once: (H, W, 3) uint8, for a PNG file and TensorBoard's add_image alike."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_png(rgb: np.ndarray, path: str) -> None:
    """Write an (H, W, 3) uint8 image as PNG atomically (temporary file, then rename)."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)
