"""Print and plot CKA matrices: the teacher's layer-by-layer matrix with its contiguous groups, and a
student's layers against the teacher's with the group CKAs of a cka_group grouping.

    python scripts/cka_matrix.py --path_t save/teachers/models/resnet56_vanilla_fashionmnist_trial_0/resnet56_best.pth
    python scripts/cka_matrix.py --path_t <teacher.pth> --path_s <student run>/resnet20_best.pth --out cka.png
    python scripts/cka_matrix.py --path_t <teacher.pth> --path_s <kd run>/ckpt_epoch_40.pth \
        --grouping <cka_group run>/cka_grouping.json --json kd_epoch40.json

Both matrices use the unbiased minibatch estimator (Nguyen et al. 2021) on --images un-augmented
training images in eval mode, after the same pooling as the loss (helper/cka_diagnostics.py): the
measure cka_group's own figures use, so any student (kd, cka_group, ...) is measured alike. The groups
come from --grouping (a cka_group run's cka_grouping.json), else from the student checkpoint when it is
a cka_group run's, else the teacher is grouped here (--groups N|auto, --student_split).

--stability R also groups the teacher again, by the same rule (the DP at the groups' n, or the knee then
the DP with --groups auto), on R bootstrap replicates of its matrix (the batches of images drawn with
replacement) and prints how often each grouping and each cut came back: whether a grouping is the data's
or the images' (helper.grouping.grouping_stability). --seed picks the images (a training run's
--data_seed, else its --seed, picks them the same way).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset  # noqa: E402
from helper.checkpoint import build_teacher, load_file  # noqa: E402
from helper.cka import bootstrap_cka  # noqa: E402
from helper.cka_diagnostics import DEFAULT_POOL, check_grouping, cka_figure, figure_rgb, layer_cka, \
    load_grouping, write_png  # noqa: E402
from helper.errors import ConfigError  # noqa: E402
from helper.grouping import STUDENT_SPLITS, block_cka, choose_n_groups, contiguous_groups, group_objective, \
    describe_stability, grouping_stability, student_split  # noqa: E402


def ascii_matrix(m, row_names, col_names) -> str:
    lines = ["           " + " ".join(f"{j:>5d}" for j in range(m.shape[1]))]
    for i, row in enumerate(m):
        lines.append(f"{i:>3d} {row_names[i][:6]:>6s}  " + " ".join(f"{v:5.2f}" for v in row))
    lines.append("columns: " + ", ".join(f"{j} {n}" for j, n in enumerate(col_names)))
    return "\n".join(lines)


def stored_grouping(ckpt) -> dict | None:
    """The grouping a cka_group run keeps in its checkpoint (the distiller's extra state), if any."""
    extra = (ckpt.get("distiller") or {}).get("_extra_state") if isinstance(ckpt, dict) else None
    if isinstance(extra, dict) and "teacher_ends" in extra:
        return check_grouping(dict(extra), "the student checkpoint's grouping")
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path_t", required=True)
    p.add_argument("--model_t", default=None)
    p.add_argument("--path_s", default=None,
                   help="a student checkpoint (any method; e.g. *_best.pth, ckpt_epoch_N.pth)")
    p.add_argument("--grouping", default=None, help="a cka_group run's cka_grouping.json: its groups (and pooling)")
    p.add_argument("--dataset", default="fashionmnist")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--pool", type=int, default=None,
                   help="as --cka_pool (0: flattened maps); default: the grouping's, else 4")
    p.add_argument("--groups", default="auto", help="teacher groups when no grouping is given or stored")
    p.add_argument("--student_split", default="even", choices=STUDENT_SPLITS,
                   help="student groups when no grouping is given or stored (as --cka_student_split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that picks the --images images")
    p.add_argument("--train_subset", type=int, default=None,
                   help="as the training run's --train_subset: with its --seed (data seed), the same images as its grouping")
    p.add_argument("--stability", type=int, default=0,
                   help="bootstrap replicates for the teacher grouping's stability (0: none)")
    p.add_argument("--out", default="cka_matrix.png")
    p.add_argument("--json", default=None, help="also write the matrices, layer names, groups and group CKAs as JSON")
    p.add_argument("--trust_checkpoint", action="store_true", help="fully unpickle files a safe load refuses")
    a = p.parse_args(argv)
    if a.stability < 0:
        raise ConfigError(f"--stability {a.stability}: give a number of bootstrap replicates, or 0 for none")
    if a.groups != "auto" and not a.groups.isdigit():
        raise ConfigError(f"--groups {a.groups!r}: give a number of groups or 'auto'")
    n_cls = dataset.num_classes(a.dataset)
    model_t, arch_t, _ = build_teacher(a.path_t, n_cls, a.model_t, a.trust_checkpoint)
    model_s, grouping, how = None, None, ""
    if a.grouping:
        grouping, how = load_grouping(a.grouping), f"from {a.grouping}"
    if a.path_s:
        ck = load_file(a.path_s, trust=a.trust_checkpoint)
        model_s, _, _ = build_teacher(a.path_s, n_cls, ck.get("arch") if isinstance(ck, dict) else None,
                                      a.trust_checkpoint)
        if grouping is None:
            grouping = stored_grouping(ck)
            how = "from the run" if grouping else ""
    if grouping:  # before any image is loaded
        l_t, l_s = len(model_t.layer_names()), len(model_s.layer_names()) if model_s is not None else None
        t_ends, s_ends = grouping["teacher_ends"], grouping["student_ends"]
        if t_ends[-1] != l_t or (l_s is not None and s_ends[-1] != l_s):
            raise ConfigError(f"the grouping ({how}) is for {t_ends[-1]} teacher and {s_ends[-1]} student layers; "
                              f"these models have {l_t} and {l_s if l_s is not None else '-'}: use the pair's grouping")
    pool = a.pool if a.pool is not None else (grouping.get("pool", DEFAULT_POOL) if grouping else DEFAULT_POOL)
    pool = pool or None
    opt = argparse.Namespace(dataset=a.dataset, data_folder=a.data_folder, batch_size=a.batch_size, seed=a.seed,
                             train_subset=a.train_subset)
    data = dataset.get_dataloaders(opt, model_t.input_shape)
    out = layer_cka(model_t, data.plain_train_images(a.images), pool, model_s, keep_batches=a.stability > 0)
    tt, st, names_t, names_s = out["teacher"], out["student_x_teacher"], out["teacher_layers"], out["student_layers"]
    if grouping:
        how += f" ({grouping.get('grouping', 'dp')}, n={len(t_ends)}, {grouping.get('student_split', 'even')} split)"
    n_max = min(len(tt), len(st)) if st is not None else len(tt)

    def rule(m):  # the teacher's groups by the DP here (with --groups auto: at the knee's n)
        return contiguous_groups(m, choose_n_groups(m, n_max=n_max) if a.groups == "auto" else int(a.groups))
    if not grouping:
        t_ends = rule(tt)
        n = len(t_ends)
        s_ends = student_split(a.student_split, len(st), t_ends, len(tt))[0] if st is not None else None
        how = f"DP here (n={n}{', knee of the objective' if a.groups == 'auto' else ''}, {a.student_split} split)"
    print(f"teacher {arch_t}: {len(tt)} layers, unbiased minibatch CKA on {out['images']} images, pool {pool}")
    print(ascii_matrix(tt, names_t, names_t))
    print(f"teacher groups {how}: ends {t_ends}, objective J={group_objective(tt, t_ends):.4f}")
    stability = None
    if a.stability:
        terms = out["teacher_terms"]
        if terms["cross"].shape[0] < 2:
            raise ConfigError(f"--stability: the {out['images']} images came in one batch; lower --batch_size")
        given = grouping is not None
        n_here = len(t_ends)
        stab_rule = (lambda m: contiguous_groups(m, n_here)) if given else rule
        stability = grouping_stability(bootstrap_cka(terms, a.stability, seed=a.seed), t_ends, stab_rule)
        stability |= {"unit": "batch", "batches": int(terms["cross"].shape[0]),
                      "rule": f"DP at n={n_here}" if given or a.groups != "auto" else "knee, then DP"}
        print(f"stability ({stability['rule']}): "
              + describe_stability(stability, t_ends, with_n=stability["rule"].startswith("knee"))
              + "; cuts " + ", ".join(f"before layer {e} {100 * f:.3g}%" for e, f in stability["cut_frequency"].items()))
    blocks = None
    if st is not None:
        reduce = grouping.get("reduce", "mean") if grouping else "mean"
        blocks = block_cka(st, s_ends, t_ends, reduce)
        print(f"\nstudent x teacher ({len(st)} x {len(tt)}); student groups ends {s_ends}")
        print(ascii_matrix(st, names_s, names_t))
        print(f"{reduce} CKA of each matched group block: " + ", ".join(f"{v:.3f}" for v in blocks)
              + f" (mean {np.mean(blocks):.3f})")
    panels = [(f"student x teacher ({os.path.basename(a.path_s)})", st)] if st is not None else []
    fig = cka_figure(tt, t_ends, panels, s_ends, names_t, names_s, title=f"teacher {arch_t}, groups {how}")
    write_png(figure_rgb(fig), a.out)
    print(f"wrote {a.out}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"teacher_cka": np.round(tt, 6).tolist(), "teacher_ends": list(map(int, t_ends)),
                       "student_x_teacher": None if st is None else np.round(st, 6).tolist(),
                       "student_ends": None if s_ends is None else list(map(int, s_ends)),
                       "group_cka": blocks, "teacher_layers": names_t, "student_layers": names_s,
                       "images": out["images"], "pool": pool, "seed": a.seed, "stability": stability}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
