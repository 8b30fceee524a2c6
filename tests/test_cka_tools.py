"""The CKA diagnostics (helper/cka_diagnostics.py: the measure, the group CKAs, the figure) against formulas
written here, and the diagnostic scripts end to end on a small dataset."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import cka_bias  # noqa: E402
import cka_matrix  # noqa: E402
from helper.cka_diagnostics import batches_of_at_least, cka_figure, group_cka, layer_cka, load_grouping  # noqa: E402
from helper.errors import ConfigError  # noqa: E402
from models import model_dict  # noqa: E402
from models.layers import LayerRecorder  # noqa: E402


def _ckpt(tmp_path, arch, extra=None):
    torch.manual_seed(0)
    folder = tmp_path / f"{arch}_vanilla_digits_trial_0"
    folder.mkdir(exist_ok=True)
    path = str(folder / f"{arch}_best.pth")
    obj = {"model": model_dict[arch](num_classes=10).state_dict(), "arch": arch}
    obj.update(extra or {})
    torch.save(obj, path)
    return path


def test_cka_matrix_prints_groups_and_writes_png_and_json(tmp_path, capsys):
    path_t = _ckpt(tmp_path, "resnet14")
    grouping = {"teacher_ends": [3, 8], "student_ends": [3, 5], "grouping": "dp"}
    path_s = _ckpt(tmp_path, "resnet8", {"distiller": {"_extra_state": grouping}})
    out, js = str(tmp_path / "m.png"), str(tmp_path / "m.json")
    cka_matrix.main(["--path_t", path_t, "--path_s", path_s, "--dataset", "digits", "--images", "64",
                     "--batch_size", "32", "--out", out, "--json", js])
    text = capsys.readouterr().out
    assert "teacher groups from the run" in text and "ends [3, 8]" in text
    data = json.load(open(js))
    tt = data["teacher_cka"]
    assert len(tt) == 8 and all(abs(tt[i][i] - 1) < 1e-6 for i in range(8))
    assert len(data["student_x_teacher"]) == 5 and data["student_ends"] == [3, 5]
    assert data["teacher_layers"] == model_dict["resnet14"](num_classes=10).layer_names()
    st = np.array(data["student_x_teacher"])
    assert data["group_cka"] == pytest.approx([st[:3, :3].mean(), st[3:, 3:].mean()], abs=1e-6)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out) > 10_000


def test_cka_matrix_measures_any_student_against_a_runs_grouping(tmp_path, capsys):
    """A kd student's checkpoint stores no grouping: --grouping takes a cka_group run's cka_grouping.json."""
    path_t = _ckpt(tmp_path, "resnet14")
    path_s = _ckpt(tmp_path, "resnet8")
    grouping = tmp_path / "cka_grouping.json"
    grouping.write_text(json.dumps({"teacher_ends": [1, 8], "student_ends": [1, 5], "pool": 2, "reduce": "max"}))
    js = str(tmp_path / "g.json")
    cka_matrix.main(["--path_t", path_t, "--path_s", path_s, "--grouping", str(grouping), "--dataset", "digits",
                     "--images", "32", "--batch_size", "16", "--out", str(tmp_path / "g.png"), "--json", js])
    data = json.load(open(js))
    st = np.array(data["student_x_teacher"])
    assert data["pool"] == 2 and data["group_cka"] == pytest.approx([st[:1, :1].max(), st[1:, 1:].max()], abs=1e-6)
    assert "max CKA of each matched group block" in capsys.readouterr().out
    grouping.write_text(json.dumps({"teacher_ends": [1, 9], "student_ends": [1, 5]}))
    with pytest.raises(ConfigError, match="9 teacher and 5 student layers"):
        cka_matrix.main(["--path_t", path_t, "--path_s", path_s, "--grouping", str(grouping), "--dataset", "digits",
                         "--images", "32", "--out", str(tmp_path / "g.png")])


def test_cka_matrix_reports_the_stability_of_the_teacher_grouping(tmp_path, capsys):
    path_t = _ckpt(tmp_path, "resnet14")
    js = str(tmp_path / "s.json")
    args = ["--path_t", path_t, "--dataset", "digits", "--images", "64", "--batch_size", "16", "--groups", "2",
            "--out", str(tmp_path / "s.png")]
    cka_matrix.main(args + ["--stability", "25", "--json", js])
    text = capsys.readouterr().out
    data = json.load(open(js))
    st, ends = data["stability"], data["teacher_ends"]
    assert (st["replicates"], st["batches"], st["rule"]) == (25, 4, "DP at n=2") and data["seed"] == 0
    assert f"stability (DP at n=2): ends {ends} in {100 * st['same_ends']:.3g}% of 25 bootstrap replicates (the 4 " \
           "batches" in text
    assert sum(f for _, f in st["most_common"]) == pytest.approx(1.0) or len(st["most_common"]) == 3
    assert all(len(e) == 2 and e[-1] == 8 for e, _ in st["most_common"])
    cka_matrix.main(args + ["--json", js])
    assert json.load(open(js))["stability"] is None and "stability" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--stability -1"):
        cka_matrix.main(args + ["--stability", "-1"])
    with pytest.raises(ConfigError, match="came in one batch"):
        cka_matrix.main(args[:6] + ["--batch_size", "64", "--stability", "5", "--out", str(tmp_path / "s.png")])


# ---- helper/cka_diagnostics.py ------------------------------------------------------------------------------

def test_batches_are_merged_to_at_least_4_images_without_dropping_any():
    def sizes(ns, k=4):
        xs = [torch.full((n, 1), float(i)) for i, n in enumerate(ns)]
        out = list(batches_of_at_least(xs, k))
        assert torch.equal(torch.cat(out), torch.cat(xs))   # same images, same order
        return [len(x) for x in out]
    assert sizes([3, 3, 3, 3, 3, 3, 3, 1]) == [6, 6, 6, 4]
    assert sizes([8, 8, 2]) == [8, 10]
    assert sizes([5, 4, 4]) == [5, 4, 4]
    assert sizes([2]) == [2] and list(batches_of_at_least([])) == []


def hsic1(k, l):
    """Song et al. (2012)'s unbiased HSIC, from its formula (diagonals zeroed)."""
    n = len(k)
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(k @ l) + one @ k @ one * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 * one @ k @ l @ one / (n - 2)) / (n * (n - 3))


def tiny_pair():
    torch.manual_seed(0)
    return model_dict["resnet8"](num_classes=5).eval(), model_dict["resnet14"](num_classes=5)


def test_layer_cka_is_the_minibatch_formula_and_leaves_the_models_as_they_were():
    model_t, model_s = tiny_pair()
    model_s.train()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 3, 32, 32, generator=g), torch.randn(5, 3, 32, 32, generator=g)]
    out = layer_cka(model_t, batches, pool=2, model_s=model_s)
    assert model_s.training and not model_t.training
    assert all(not m._forward_hooks for m in list(model_t.modules()) + list(model_s.modules()))  # hooks removed
    cross_st, self_s, self_t = 0, 0, 0
    for x in batches:
        grams = []
        for m in (model_s, model_t):
            rec = LayerRecorder(m.eval())
            with rec, torch.no_grad():
                m(x)
            rec.remove()
            grams.append([(f := F.adaptive_avg_pool2d(v, 2).flatten(1) if v.dim() == 4 else v).double().numpy()
                          @ f.double().numpy().T for v in rec.layers])
        gs, gt = grams
        cross_st = cross_st + np.array([[hsic1(a, b) for b in gt] for a in gs])
        self_s = self_s + np.array([hsic1(a, a) for a in gs])
        self_t = self_t + np.array([hsic1(b, b) for b in gt])
    expected = cross_st / np.sqrt(np.outer(self_s, self_t))
    assert out["student_x_teacher"].shape == (len(model_s.layer_names()), 5)
    assert np.allclose(out["student_x_teacher"], expected, atol=1e-6)
    assert np.allclose(np.diag(out["teacher"]), 1) and out["images"] == 11
    assert out["student_layers"] == model_s.layer_names()


def test_group_cka_and_grouping_files(tmp_path):
    model_t, model_s = tiny_pair()
    images = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
    grouping = {"teacher_ends": [2, 5], "student_ends": [3, 8], "pool": 4}
    out = group_cka(model_t, model_s, grouping, images)
    st = out["student_x_teacher"]
    assert out["group_cka"] == pytest.approx([st[:3, :2].mean(), st[3:, 2:].mean()])
    assert out["mean"] == pytest.approx(np.mean(out["group_cka"]))
    unnamed = group_cka(model_t, model_s, {"teacher_ends": [2, 5], "student_ends": [3, 8]}, images)
    assert unnamed["pool"] == 4 and unnamed["group_cka"] == out["group_cka"]   # cka_group's default pooling
    flat = group_cka(model_t, model_s, grouping, images, pool=None)
    assert flat["pool"] is None and flat["group_cka"] != out["group_cka"]
    with pytest.raises(ConfigError, match="use the grouping of this pair"):
        group_cka(model_s, model_t, grouping, images)
    path = tmp_path / "g.json"
    for text, needle in [("{", "cannot read"), ("[1, 2]", "no grouping object"),
                         ('{"teacher_ends": [2, 5]}', "as many group ends"),
                         ('{"teacher_ends": [2, 5], "student_ends": [3, 8.5]}', "integers"),
                         ('{"teacher_ends": [5, 2], "student_ends": [3, 8]}', "invalid group ends"),
                         ('{"teacher_ends": [2, 5], "student_ends": [3, 8], "pool": -1}', "pool"),
                         ('{"teacher_ends": [2, 5], "student_ends": [3, 8], "reduce": "sum"}', "reduce")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_grouping(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_grouping(str(tmp_path / "missing.json"))


def test_figure_names_groups_and_a_colour_range_that_keeps_negative_values():
    t = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.2], [0.1, 0.2, 1.0]])
    start, end = np.array([[-0.2, 0.1, 0.0], [0.3, 0.2, -0.1]]), np.array([[0.7, 0.6, 0.1], [0.2, 0.3, 0.9]])
    fig = cka_figure(t, [2, 3], [("start", start), ("end", end)], [1, 2], ["a", "b", "c"], ["x", "y"])
    teacher_ax, start_ax, end_ax = fig.axes[:3]
    assert [lb.get_text() for lb in teacher_ax.get_xticklabels()] == ["a", "b", "c"]
    assert [lb.get_text() for lb in start_ax.get_yticklabels()] == ["x", "y"]
    assert (teacher_ax.images[0].norm.vmin, teacher_ax.images[0].norm.vmax) == (0.1, 1.0)
    for ax in (start_ax, end_ax):   # one scale for the student panels, spanning their values, negatives kept
        assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (-0.2, 0.9)
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in start_ax.patches] == [
        (-0.5, -0.5, 2, 1), (1.5, 0.5, 1, 1)]   # the matched blocks (student group i x teacher group i)
    assert len(fig.axes) == 5   # three panels and two colour bars


def test_cka_bias_reports_matched_above_shuffled(capsys):
    cka_bias.main(["--model_t", "resnet14", "--model_s", "resnet8", "--dataset", "digits", "--batch_size", "32",
                   "--batches", "2"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| unbiased") or
            ln.startswith("| biased")]
    assert len(rows) == len(cka_bias.CHOICES)
    for ln in rows:
        same, shuffled = float(ln.split("|")[3]), float(ln.split("|")[4])
        assert same > shuffled  # the same images are more similar than unrelated ones
    unbiased = [float(ln.split("|")[4]) for ln in rows if ln.startswith("| unbiased")]
    assert all(abs(v) < 0.1 for v in unbiased)  # the unbiased estimator's chance level is ~0
