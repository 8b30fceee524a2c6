"""Print and plot CKA matrices: the teacher's layer-by-layer matrix with its contiguous groups, and a
trained student's layers against the teacher's (with the group blocks the cka_group loss matched).

    python scripts/cka_matrix.py --path_t save/teachers/models/resnet56_vanilla_fashionmnist_trial_0/resnet56_best.pth
    python scripts/cka_matrix.py --path_t <teacher.pth> --path_s <student run>/resnet20_best.pth --out cka.png

Both matrices use the unbiased minibatch estimator (Nguyen et al. 2021) on --images un-augmented
training images, after the same --pool as the loss. With --path_s from a cka_group run, the groups are
the ones stored in that run's checkpoint; otherwise the teacher is grouped here (--groups N|auto).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset  # noqa: E402
from helper.checkpoint import build_teacher, load_file  # noqa: E402
from helper.cka import MinibatchCKA, pool_features  # noqa: E402
from helper.grouping import choose_n_groups, contiguous_groups, even_split, group_objective  # noqa: E402
from models.layers import LayerRecorder  # noqa: E402


@torch.no_grad()
def matrices(model_t, model_s, images, pool):
    """Teacher x teacher and (optionally) student x teacher unbiased minibatch CKA."""
    rt = LayerRecorder(model_t.eval())
    rs = LayerRecorder(model_s.eval()) if model_s is not None else None
    tt, st = MinibatchCKA(), MinibatchCKA()
    for x in images:
        if x.size(0) < 4:
            continue
        with rt:
            model_t(x)
        ft = [pool_features(f, pool) for f in rt.layers]
        tt.update(ft)
        if rs is not None:
            with rs:
                model_s(x)
            st.update([pool_features(f, pool) for f in rs.layers], ft)
    return tt.compute().numpy(), (st.compute().numpy() if rs is not None else None), rt.names, \
        (rs.names if rs is not None else None)


def ascii_matrix(m, row_names, col_names=None) -> str:
    lines = ["      " + " ".join(f"{j:>5d}" for j in range(m.shape[1]))]
    for i, row in enumerate(m):
        lines.append(f"{i:>4d}  " + " ".join(f"{v:5.2f}" for v in row) + f"   {row_names[i]}")
    return "\n".join(lines)


def plot(path, tt, t_ends, st=None, s_ends=None, names_t=None, names_s=None, title=""):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install '.[plot]'); no PNG written")
        return
    n_plots = 1 if st is None else 2
    fig, axes = plt.subplots(1, n_plots, figsize=(6.2 * n_plots, 5.6), squeeze=False)
    ax = axes[0][0]
    im = ax.imshow(tt, vmin=0, vmax=1, cmap="viridis")
    starts = [0] + list(t_ends[:-1])
    for a, b in zip(starts, t_ends):  # the teacher's groups as squares on the diagonal
        ax.add_patch(plt.Rectangle((a - 0.5, a - 0.5), b - a, b - a, fill=False, ec="red", lw=2))
    ax.set_title(f"teacher layers (groups in red){title}")
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("teacher layer")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if st is not None:
        ax = axes[0][1]
        im = ax.imshow(st, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        s_starts = [0] + list(s_ends[:-1])
        for (a, b), (c, d) in zip(zip(s_starts, s_ends), zip(starts, t_ends)):
            ax.add_patch(plt.Rectangle((c - 0.5, a - 0.5), d - c, b - a, fill=False, ec="red", lw=2))
        ax.set_title("student x teacher (matched group blocks in red)")
        ax.set_xlabel("teacher layer")
        ax.set_ylabel("student layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path_t", required=True)
    p.add_argument("--model_t", default=None)
    p.add_argument("--path_s", default=None, help="a student checkpoint (e.g. a cka_group run's *_best.pth)")
    p.add_argument("--dataset", default="fashionmnist")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--pool", type=int, default=4, help="as --cka_pool (0: flattened maps)")
    p.add_argument("--groups", default="auto", help="teacher groups when the student run stores none")
    p.add_argument("--out", default="cka_matrix.png")
    p.add_argument("--json", default=None, help="also write the matrices and groups as JSON")
    p.add_argument("--trust_checkpoint", action="store_true", help="fully unpickle files a safe load refuses")
    a = p.parse_args(argv)
    n_cls = dataset.num_classes(a.dataset)
    model_t, arch_t, _ = build_teacher(a.path_t, n_cls, a.model_t, a.trust_checkpoint)
    model_s, s_groups = None, None
    if a.path_s:
        ck = load_file(a.path_s, trust=a.trust_checkpoint)
        model_s, _, _ = build_teacher(a.path_s, n_cls, ck.get("arch") if isinstance(ck, dict) else None,
                                      a.trust_checkpoint)
        extra = (ck.get("distiller") or {}).get("_extra_state") if isinstance(ck, dict) else None
        s_groups = extra if isinstance(extra, dict) and "teacher_ends" in extra else None
    opt = argparse.Namespace(dataset=a.dataset, data_folder=a.data_folder, batch_size=a.batch_size, seed=0)
    data = dataset.get_dataloaders(opt, model_t.input_shape)
    pool = a.pool or None
    tt, st, names_t, names_s = matrices(model_t, model_s, data.plain_train_images(a.images), pool)
    if s_groups:
        t_ends, s_ends = s_groups["teacher_ends"], s_groups["student_ends"]
        how = f"from the run ({s_groups.get('grouping', 'dp')}, n={len(t_ends)})"
    else:
        n_max = min(len(tt), len(st)) if st is not None else len(tt)
        n = choose_n_groups(tt, n_max=n_max) if a.groups == "auto" else int(a.groups)
        t_ends = contiguous_groups(tt, n)
        s_ends = even_split(len(st), n) if st is not None else None
        how = f"DP here (n={n}{', knee of the objective' if a.groups == 'auto' else ''})"
    print(f"teacher {arch_t}: {len(tt)} layers, unbiased minibatch CKA on {a.images} images, pool {pool}")
    print(ascii_matrix(tt, names_t))
    print(f"teacher groups {how}: ends {t_ends}, objective J={group_objective(tt, t_ends):.4f}")
    if st is not None:
        print(f"\nstudent x teacher ({len(st)} x {len(tt)}); student groups ends {s_ends}")
        print(ascii_matrix(st, names_s))
        starts_s, starts_t = [0] + list(s_ends[:-1]), [0] + list(t_ends[:-1])
        blocks = [float(st[a_:b_, c:d].mean()) for a_, b_, c, d in zip(starts_s, s_ends, starts_t, t_ends)]
        print("mean CKA of each matched group block: " + ", ".join(f"{v:.3f}" for v in blocks))
    plot(a.out, tt, t_ends, st, s_ends, names_t, names_s)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"teacher_cka": np.round(tt, 6).tolist(), "teacher_ends": list(map(int, t_ends)),
                       "student_x_teacher": None if st is None else np.round(st, 6).tolist(),
                       "student_ends": None if s_ends is None else list(map(int, s_ends)),
                       "teacher_layers": names_t, "student_layers": names_s}, f, indent=1)


if __name__ == "__main__":
    main()
