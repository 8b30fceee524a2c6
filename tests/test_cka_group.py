"""cka_group (distiller_zoo/CKAGroup.py): its loss against the formula written out here on fixed inputs
(pooling, unbiased and biased CKA, diagonal blocks, reductions, group weights), its grouping pass on a real
teacher against a brute-force optimum, its state (grouping saved, restored, reused), its refusals, and its
per-epoch diagnostics. helper/cka.py and helper/grouping.py have their own tests; nothing here calls them."""
from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
import torch

from distiller_zoo import Batch, BuildContext, Outputs, build_distiller, get_distiller_class
from fakedata import planted_similarity
from helper.errors import ConfigError
from helper.cka_diagnostics import group_cka
from models import model_dict
from models.layers import LayerRecorder

S_SHAPES = [(3, 8, 8), (4, 8, 8), (5, 4, 4), (5, 4, 4), (6,)]                  # 5 student layers
T_SHAPES = [(3, 16, 16), (4, 8, 8), (4, 8, 8), (6, 4, 4), (6, 2, 2), (7,)]     # 6 teacher layers
B = 10


def make_opt(**over):
    p = argparse.ArgumentParser()
    get_distiller_class("cka_group").add_arguments(p)
    opt = p.parse_args([])
    for k, v in dict(seed=0, world_size=1, save_folder=None, kd_T=4.0, cka_log_every=0, epochs=4).items():
        setattr(opt, k, v)
    for k, v in over.items():
        setattr(opt, k, v)
    return opt


def probe(shapes):
    return Outputs(logits=torch.zeros(2, 5), layers=[torch.zeros(2, *s) for s in shapes])


def build(s_shapes=S_SHAPES, t_shapes=T_SHAPES, batch=B, model_t=None, images=None, model_s=None, cache=None,
          **over):
    ctx = BuildContext(opt=make_opt(**over), s_probe=probe(s_shapes), t_probe=probe(t_shapes),
                       model_s=model_s or torch.nn.Identity(), model_t=model_t or torch.nn.Identity(), num_classes=5,
                       n_train=100, local_batch_size=batch, plain_train_images=images,
                       cache={} if cache is None else cache)
    return build_distiller("cka_group", ctx)


def with_grouping(d, s_ends, t_ends):
    """Give the distiller a grouping the way a checkpoint does (its extra state), then prepare()."""
    d.set_extra_state({"n_groups": len(t_ends), "n_rule": "given", "grouping": "dp", "teacher_ends": t_ends,
                       "student_ends": s_ends, "objective": 0.0, "dp_objective_curve": [0.0]})
    d.prepare(log=lambda *_: None)
    return d


def layers(shapes, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        x = torch.randn(B, *s, generator=g)
        if len(s) == 3:  # some spatial structure, so pooling matters
            x = x + torch.linspace(0, 1, s[1] * s[2]).view(1, 1, s[1], s[2])
        out.append(x.requires_grad_(requires_grad))
    return out


# ---- the formula, written out independently (float64 numpy) ------------------------------------------

def ref_pool(x, size=4):
    """Mean over equal tiles (the maps here have sides that are multiples of the target)."""
    x = x.detach().double().numpy()
    if x.ndim != 4 or (x.shape[2] <= size and x.shape[3] <= size):
        return x.reshape(x.shape[0], -1)
    b, c, h, w = x.shape
    oh, ow = min(h, size), min(w, size)
    return x.reshape(b, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5)).reshape(b, -1)


def hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l):
    """Song et al. (2012), eq. 5: diagonals zeroed."""
    n = k.shape[0]
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 * (one @ k @ l @ one) / (n - 2)) / (n * (n - 3))


def ref_cka(x, y, unbiased):
    k, l = x @ x.T, y @ y.T
    h = hsic_unbiased if unbiased else hsic_biased
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def ref_loss(s, t, s_ends, t_ends, unbiased=True, reduce="mean", weights=None):
    s = [ref_pool(x) for x in s]
    t = [ref_pool(x) for x in t]
    c = np.array([[ref_cka(a, b, unbiased) for b in t] for a in s])
    s_starts, t_starts = [0] + s_ends[:-1], [0] + t_ends[:-1]
    blocks = [c[a:b, p:q] for a, b, p, q in zip(s_starts, s_ends, t_starts, t_ends)]
    per = np.array([getattr(np, reduce)(blk) for blk in blocks])
    w = np.ones(len(blocks)) if weights is None else np.asarray(weights, float)
    return float((w / w.sum()) @ (1 - per)), c


# ---- the loss ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator,reduce,weights,w_ref", [
    ("unbiased", "mean", "uniform", None),
    ("biased", "mean", "uniform", None),
    ("unbiased", "max", "size", [1, 2, 3]),   # teacher group sizes of ends [1, 3, 6]
    ("unbiased", "min", "2,1,1", [2, 1, 1]),
])
def test_loss_matches_formula(estimator, reduce, weights, w_ref):
    s_ends, t_ends = [2, 4, 5], [1, 3, 6]
    d = with_grouping(build(cka_estimator=estimator, cka_reduce=reduce, cka_group_weights=weights), s_ends, t_ends)
    s, t = layers(S_SHAPES, 1), layers(T_SHAPES, 2)
    t[2] = t[1] * 3.0 + 1.0   # a teacher layer equal to another up to scale and shift
    s[1] = t[1].clone()       # a student layer equal to a teacher layer: CKA 1 on that pair
    loss = d(Outputs(logits=None, layers=s), Outputs(logits=None, layers=t),
             Batch(images=torch.zeros(B), targets=torch.zeros(B)))
    expected, c = ref_loss(s, t, s_ends, t_ends, estimator == "unbiased", reduce, w_ref)
    assert abs(c[1, 1] - 1) < 1e-9 and abs(c[1, 2] - 1) < 1e-9   # the reference itself is sane
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=2e-5)


def test_the_cka_matrix_stays_float32_under_bf16_autocast():
    """--amp: the layers may come in bf16, but the unit Grams and their product are float32 (README)."""
    d = with_grouping(build(), [2, 4, 5], [1, 3, 6])
    s, t = layers(S_SHAPES, 7), layers(T_SHAPES, 8)
    ref = d.cka(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = d.cka([x.bfloat16() for x in s], [x.bfloat16() for x in t])
        same_inputs = d.cka(s, t)
    assert got.dtype == torch.float32 and same_inputs.dtype == torch.float32
    torch.testing.assert_close(same_inputs, ref, rtol=0, atol=1e-6)  # autocast does not reach the product
    torch.testing.assert_close(got, ref, rtol=0, atol=3e-2)          # only the bf16 rounding of the layers


def test_unpooled_loss_matches_formula_on_flattened_maps():
    s_ends, t_ends = [2, 5], [3, 6]
    d = with_grouping(build(cka_pool=0), s_ends, t_ends)
    s, t = layers(S_SHAPES, 3), layers(T_SHAPES, 4)
    loss = d(Outputs(logits=None, layers=s), Outputs(logits=None, layers=t), Batch(torch.zeros(B), torch.zeros(B)))
    flat = lambda xs: [x.reshape(B, -1, 1, 1) for x in xs]  # noqa: E731  (1x1 maps: ref_pool flattens only)
    expected, _ = ref_loss(flat(s), flat(t), s_ends, t_ends)
    assert loss.item() == pytest.approx(expected, abs=2e-5)


def test_gradient_reaches_student_layers_only_and_lowers_the_loss():
    d = with_grouping(build(), [2, 4, 5], [1, 3, 6])
    s, t = layers(S_SHAPES, 5, requires_grad=True), layers(T_SHAPES, 6, requires_grad=True)
    loss = d(Outputs(logits=None, layers=s), Outputs(logits=None, layers=t), Batch(torch.zeros(B), torch.zeros(B)))
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    # a small step along -grad on the student's layers lowers the loss
    with torch.no_grad():
        s2 = [x - 0.5 * x.grad / x.grad.norm() for x in s]
        t2 = [x.detach() for x in t]
        after = d(Outputs(logits=None, layers=s2), Outputs(logits=None, layers=t2), Batch(torch.zeros(B), torch.zeros(B)))
    assert after.item() < loss.item()


def test_identical_flows_give_zero_loss():
    shapes = [(3, 8, 8), (4, 4, 4), (5,)]
    d = with_grouping(build(s_shapes=shapes, t_shapes=shapes), [1, 2, 3], [1, 2, 3])
    x = layers(shapes, 7)
    loss = d(Outputs(logits=None, layers=[v * 2 for v in x]), Outputs(logits=None, layers=x),
             Batch(torch.zeros(B), torch.zeros(B)))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


# ---- the grouping pass on a real teacher ------------------------------------------------------------------

def brute_force_best(sim, n):
    L = sim.shape[0]
    best, arg = -np.inf, None
    for cuts in itertools.combinations(range(1, L), n - 1):
        ends = list(cuts) + [L]
        starts = [0] + list(cuts)
        j = sum(sim[a:b, a:b].sum() / (b - a) for a, b in zip(starts, ends))
        if j > best + 1e-12:
            best, arg = j, ends
    return arg, best


def teacher_and_images():
    torch.manual_seed(0)
    model_t = model_dict["resnet8"](num_classes=5).eval()
    g = torch.Generator().manual_seed(1)
    data = torch.randn(24, 3, 32, 32, generator=g)
    images = lambda n: [data[i:i + 8] for i in range(0, min(n, 24), 8)]  # noqa: E731
    with LayerRecorder(model_t) as rec, torch.no_grad():
        model_t(data[:2])
    t_shapes = [tuple(f.shape[1:]) for f in rec.layers]
    rec.remove()
    return model_t, images, t_shapes


@pytest.mark.parametrize("n", ["2", "3", "auto"])
def test_dp_grouping_of_a_real_teacher_is_the_brute_force_optimum(tmp_path, n):
    model_t, images, t_shapes = teacher_and_images()
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images,
              cka_groups=n, cka_images=24, save_folder=str(tmp_path))
    before = {k: v.clone() for k, v in model_t.state_dict().items()}
    d.prepare(log=lambda *_: None)
    g = d.grouping
    sim = np.array(g["teacher_cka"])
    L_t = len(t_shapes)
    assert sim.shape == (L_t, L_t) and np.allclose(np.diag(sim), 1, atol=1e-4) and np.allclose(sim, sim.T, atol=1e-5)
    ends, best = brute_force_best(sim, g["n_groups"])
    assert g["teacher_ends"] == ends and g["objective"] == pytest.approx(best, rel=1e-6)
    if n != "auto":
        assert g["n_groups"] == int(n) and g["n_rule"] == "given"
    assert 1 <= g["n_groups"] <= min(len(S_SHAPES), L_t)
    sizes = np.diff([0] + g["student_ends"])
    assert g["student_ends"][-1] == len(S_SHAPES) and sizes.max() - sizes.min() <= 1 and sizes[0] == sizes.max()
    with open(tmp_path / "cka_grouping.json") as f:
        assert json.load(f)["teacher_ends"] == ends
    assert all(torch.equal(v, model_t.state_dict()[k]) for k, v in before.items())   # teacher untouched


@pytest.mark.parametrize("kind", ["uniform", "random"])
def test_ablation_groupings(kind):
    model_t, images, t_shapes = teacher_and_images()
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images,
              cka_groups="3", cka_images=24, cka_grouping=kind, seed=5)
    d.prepare(log=lambda *_: None)
    ends = d.grouping["teacher_ends"]
    assert len(ends) == 3 and ends[-1] == len(t_shapes) and all(a < b for a, b in zip([0] + ends, ends))
    if kind == "uniform":
        assert ends == [int(e) for e in np.cumsum([len(a) for a in np.array_split(np.arange(len(t_shapes)), 3)])]


def test_grouping_is_saved_in_the_state_dict_and_reused_without_the_teacher():
    model_t, images, t_shapes = teacher_and_images()
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images, cka_images=24)
    d.prepare(log=lambda *_: None)
    state = d.state_dict()

    def no_images(n):
        raise AssertionError("a restored grouping must not be recomputed")
    d2 = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=no_images)
    d2.load_state_dict(state)
    msgs = []
    d2.prepare(log=msgs.append)
    assert d2.grouping == d.grouping and "restored" in msgs[0]
    assert torch.equal(d2._mask, d._mask)


def test_the_grouping_reports_its_bootstrap_stability(tmp_path):
    """Three identical batches of grouping images: every replicate is the measured matrix, so the rule
    gives the same groups in all of them; three different batches: the report is a distribution over the
    replicates, whose most common grouping list agrees with the cut frequencies."""
    model_t, images, t_shapes = teacher_and_images()
    same = lambda n: [images(24)[0]] * 3  # noqa: E731
    msgs = []
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=same, cka_groups="auto",
              cka_images=24, cka_stability=30, save_folder=str(tmp_path))
    d.prepare(log=msgs.append)
    st = json.load(open(tmp_path / "cka_grouping.json"))["stability"]
    ends = d.grouping["teacher_ends"]
    assert (st["replicates"], st["batches"], st["same_ends"], st["same_n"]) == (30, 3, 1.0, 1.0)
    assert st["most_common"] == [[ends, 1.0]]
    assert f"stability: teacher ends {ends} in 100% of 30 bootstrap replicates (the 3 batches" in msgs[0]
    assert f"n={len(ends)} in 100%" in msgs[0] and "otherwise" not in msgs[0]

    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images, cka_groups="3",
              cka_images=24, cka_stability=40)
    d.prepare(log=lambda *_: None)
    st = d.grouping["stability"]
    assert st["replicates"] == 40 and st["batches"] == 3 and st["same_n"] == 1.0 and 0 <= st["same_ends"] <= 1
    assert sum(f for _, f in st["most_common"]) <= 1 + 1e-9
    top, top_frac = st["most_common"][0]
    assert all(st["cut_frequency"][str(e)] >= top_frac - 1e-9 for e in top[:-1])
    listed = {tuple(e): f for e, f in st["most_common"]}
    if tuple(d.grouping["teacher_ends"]) in listed:
        assert listed[tuple(d.grouping["teacher_ends"])] == pytest.approx(st["same_ends"])
    else:
        assert st["same_ends"] <= min(listed.values())

    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images, cka_groups="3",
              cka_images=24, cka_grouping="random")
    d.prepare(log=msgs.append)
    assert d.grouping["stability"]["replicates"] == 0
    assert "stability not measured (a random cut at a given n does not depend on the grouping images)" in msgs[-1]
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=images, cka_images=24,
              cka_stability=0)
    d.prepare(log=msgs.append)
    assert d.grouping["stability"] is None and "stability" not in msgs[-1]
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=8, model_t=model_t, images=lambda n: [images(24)[0]],
              cka_images=8)
    d.prepare(log=msgs.append)
    assert d.grouping["stability"]["replicates"] == 0 and "stability not measured (the grouping images came in one " \
        "batch" in msgs[-1]


# ---- refusals and diagnostics ------------------------------------------------------------------------------

@pytest.mark.parametrize("over,batch,needle", [
    ({}, 3, "needs at least 4"),
    ({"cka_groups": "9"}, B, "between 1 and"),
    ({"cka_groups": "two"}, B, "integer or 'auto'"),
    ({"kd_mode": "self"}, B, "kd_mode self: it groups the teacher's layers once"),
    ({"kd_mode": "online"}, B, r"kd_mode online: .* \(a peer that trains too\)"),
    ({"cka_images": 3}, B, "--cka_images 3: .* at least 4 images"),
    ({"cka_estimator": "biased", "cka_images": 2}, 3, "--cka_images 2"),
    ({"cka_log_every": -1}, B, "--cka_log_every -1"),
    ({"cka_stability": -1}, B, "--cka_stability -1"),
])
def test_refusals_at_build(over, batch, needle):
    with pytest.raises(ConfigError, match=needle):
        build(batch=batch, **over)


@pytest.mark.parametrize("weights", ["1,2", "1,-1,1", "a,b,c"])
def test_bad_group_weights_are_refused(weights):
    with pytest.raises(ConfigError, match="--cka_group_weights"):
        with_grouping(build(cka_group_weights=weights), [2, 4, 5], [1, 3, 6])


class FakeWriter:
    def __init__(self):
        self.scalars, self.images = {}, []

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value

    def add_image(self, tag, img, step, dataformats):
        self.images.append((tag, img.shape, step, dataformats))


def test_epoch_diagnostics_are_means_of_the_batches_and_reset_on_every_rank():
    d = with_grouping(build(), [2, 4, 5], [1, 3, 6])
    run = lambda seed: d(Outputs(logits=None, layers=layers(S_SHAPES, seed)),  # noqa: E731
                         Outputs(logits=None, layers=layers(T_SHAPES, seed + 100)), Batch(torch.zeros(B), torch.zeros(B)))
    losses = [run(s).item() for s in (1, 2)]
    w = FakeWriter()
    d.log_tensorboard(w, 1)
    groups = [w.scalars[f"cka_group/group_{i}"] for i in range(3)]
    assert np.mean([1 - v for v in groups]) == pytest.approx(np.mean(losses), abs=1e-5)
    assert w.scalars["cka_group/diag_mean"] == pytest.approx(np.mean(groups), abs=1e-6)
    assert d._epoch_batches == 0 and d._group_sum.abs().sum() == 0
    run(3)
    d.log_tensorboard(None, 2)   # a rank that writes nothing still starts the next epoch from zero
    assert d._epoch_batches == 0 and d._group_sum.abs().sum() == 0


def test_a_batch_of_3_with_the_biased_loss_groups_on_batches_of_at_least_4():
    """The loss accepts batches of 3 (biased estimator); the grouping pass (unbiased, B >= 4) merges the
    image batches of 3 into [6, 6, 6, 4] (the last single image joins the last batch) instead of failing."""
    model_t, _, t_shapes = teacher_and_images()
    data = torch.randn(22, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    images = lambda n: [data[i:i + 3] for i in range(0, min(n, 22), 3)]  # noqa: E731  (3, ..., 3, 1)
    d = build(s_shapes=S_SHAPES, t_shapes=t_shapes, batch=3, model_t=model_t, images=images,
              cka_estimator="biased", cka_groups="2", cka_images=22)
    d.prepare(log=lambda *_: None)
    assert d.grouping["images"] == 22
    # the unbiased minibatch formula (sums of HSIC_1 over batches, divided once) on those batches
    cross, rec = 0, LayerRecorder(model_t)
    for chunk in (data[0:6], data[6:12], data[12:18], data[18:22]):
        with rec, torch.no_grad():
            model_t(chunk)
        grams = [x @ x.T for x in (ref_pool(f) for f in rec.layers)]
        cross = cross + np.array([[hsic_unbiased(a, b) for b in grams] for a in grams])
    rec.remove()
    expected = cross / np.sqrt(np.outer(np.diag(cross), np.diag(cross)))
    assert np.allclose(d.grouping["teacher_cka"], expected, atol=2e-5)


planted = planted_similarity


def with_matrix(d, sim):
    """Hand the grouping pass a teacher matrix (what teacher_similarity would have measured)."""
    names = [f"t{i}" for i in range(len(sim))]
    d.teacher_similarity = lambda: {"teacher": np.asarray(sim), "teacher_layers": names, "images": 100}
    return d


def test_auto_n_says_when_the_cap_decided_it(tmp_path):
    sim = planted([2, 2, 2])  # 6 teacher layers in 3 clear blocks: the knee of the whole curve is 3
    msgs = []
    d = with_matrix(build(s_shapes=S_SHAPES[:2], save_folder=str(tmp_path)), sim)  # 2 student layers: n <= 2
    d.prepare(log=msgs.append)
    g = json.load(open(tmp_path / "cka_grouping.json"))
    assert (g["n_groups"], g["n_max"], g["n_capped"], g["n_knee_uncapped"]) == (2, 2, True, 3)
    assert "knee capped at min(L_s, L_t) = 2: the whole curve's knee is 3, so the cap decided n" in msgs[0]
    d = with_matrix(build(), sim)   # 5 student layers: the knee decides
    d.prepare(log=msgs.append)
    assert (d.grouping["n_groups"], d.grouping["n_capped"], d.grouping["n_knee_uncapped"]) == (3, False, 3)
    assert "capped" not in msgs[1] and "n=3 (knee)" in msgs[1]
    d = with_matrix(build(cka_groups="2"), sim)
    d.prepare(log=msgs.append)
    assert (d.grouping["n_capped"], d.grouping["n_knee_uncapped"]) == (False, None)


# RESULTS.md's resnet20 teacher matrix (Fashion-MNIST, 1,000 images): the DP with n = 3 cuts it [1, 8, 11]
RESNET20_CKA = """1.00 0.89 0.83 0.82 0.81 0.81 0.80 0.77 0.69 0.61 0.59
0.89 1.00 0.98 0.97 0.95 0.95 0.94 0.91 0.81 0.73 0.70
0.83 0.98 1.00 0.99 0.97 0.96 0.95 0.92 0.83 0.74 0.70
0.82 0.97 0.99 1.00 0.98 0.96 0.95 0.93 0.83 0.76 0.72
0.81 0.95 0.97 0.98 1.00 0.98 0.96 0.94 0.86 0.78 0.74
0.81 0.95 0.96 0.96 0.98 1.00 0.99 0.96 0.87 0.79 0.75
0.80 0.94 0.95 0.95 0.96 0.99 1.00 0.97 0.89 0.81 0.77
0.77 0.91 0.92 0.93 0.94 0.96 0.97 1.00 0.95 0.88 0.84
0.69 0.81 0.83 0.83 0.86 0.87 0.89 0.95 1.00 0.96 0.92
0.61 0.73 0.74 0.76 0.78 0.79 0.81 0.88 0.96 1.00 0.98
0.59 0.70 0.70 0.72 0.74 0.75 0.77 0.84 0.92 0.98 1.00"""


@pytest.mark.parametrize("split,s_ends,s_groups,anchored", [
    ("even", [2, 4, 5], [["tap_stem", "layer1.0"], ["layer2.0", "layer3.0"], ["tap_pool"]], []),
    ("proportional", [1, 4, 5], [["tap_stem"], ["layer1.0", "layer2.0", "layer3.0"], ["tap_pool"]], []),
    ("anchored", [1, 3, 5], [["tap_stem"], ["layer1.0", "layer2.0"], ["layer3.0", "tap_pool"]], ["stem"]),
])
def test_student_splits_of_resnet8_against_the_resnet20_groups(tmp_path, split, s_ends, s_groups, anchored):
    sim = np.array([[float(v) for v in line.split()] for line in RESNET20_CKA.splitlines()])
    model_t, model_s = model_dict["resnet20"](num_classes=5), model_dict["resnet8"](num_classes=5)
    d = build(s_shapes=[(1,)] * 5, t_shapes=[(1,)] * 11, model_t=model_t, model_s=model_s, cka_groups="3",
              cka_student_split=split, save_folder=str(tmp_path))
    d.teacher_similarity = lambda: {"teacher": sim, "teacher_layers": model_t.layer_names(), "images": 1000}
    msgs = []
    d.prepare(log=msgs.append)
    g = json.load(open(tmp_path / "cka_grouping.json"))
    assert g["teacher_ends"] == [1, 8, 11] and g["student_ends"] == s_ends
    assert (g["student_split"], g["student_anchored"]) == (split, anchored)
    assert g["teacher_layers"] == model_t.layer_names() and g["student_layers"] == model_s.layer_names()
    assert g["student_groups"] == s_groups
    assert g["teacher_groups"] == [["tap_stem"], model_t.layer_names()[1:8], ["layer3.1", "layer3.2", "tap_pool"]]
    assert "teacher groups [tap_stem | layer1.0..layer3.0 | layer3.1..tap_pool]" in msgs[0]
    assert f"student groups ({split} split" + (", stem anchored)" if anchored else ")") in msgs[0]
    assert [list(r) for r in d.s_groups] == [list(range(a, b)) for a, b in zip([0] + s_ends[:-1], s_ends)]


def test_anchored_split_without_a_single_layer_end_group_is_the_even_split_and_says_so():
    d = with_matrix(build(cka_student_split="anchored", cka_groups="2"), planted([3, 3]))
    msgs = []
    d.prepare(log=msgs.append)
    assert d.grouping["teacher_ends"] == [3, 6] and d.grouping["student_ends"] == [3, 5]
    assert d.grouping["student_anchored"] == []
    assert "(anchored split: no teacher group is the stem or the embedding alone, so the even split)" in msgs[0]


class Stub(torch.nn.Sequential):
    """A model of n parameter-free layers with names: what the distiller reads of a model's structure."""

    def __init__(self, n):
        super().__init__(*[torch.nn.Identity() for _ in range(n)])

    def layer_names(self):
        return [str(i) for i in range(len(self))]


def test_a_restored_grouping_must_fit_the_models_and_the_options():
    good = {"n_groups": 3, "n_rule": "given", "grouping": "dp", "teacher_ends": [1, 3, 6], "student_ends": [2, 4, 5],
            "objective": 0.0, "dp_objective_curve": [0.0], "teacher_cka": np.eye(6).tolist(), "images": 10}
    for over, state, needle in [
        ({"cka_student_split": "proportional"}, {}, "--cka_student_split even, this run asks for proportional"),
        ({"cka_grouping": "uniform"}, {}, "--cka_grouping dp, this run asks for uniform"),
        ({"cka_groups": "2"}, {}, "--cka_groups 3, this run asks for 2"),
        ({}, {"student_ends": [2, 4, 7]}, "does not fit a 5-layer student and a 6-layer teacher"),
        ({}, {"teacher_ends": "x"}, "does not fit"),
        ({}, {"student_ends": [5]}, "does not fit"),
        ({}, {"objective": None}, "or is damaged"),
        ({"cka_log_every": 1}, {"teacher_cka": [[1.0]]}, "or is damaged"),
        ({"cka_log_every": 1}, {"measurements": [{"epoch": 0, "group_cka": [0.1] * 3, "student_x_teacher": [[0]]}]},
         "or is damaged"),
    ]:
        d = build(model_s=Stub(5), model_t=Stub(6), **over)
        d.set_extra_state({**good, **state})
        with pytest.raises(ConfigError, match=needle):
            d.prepare(log=lambda *_: None)
    d = build(cka_student_split="anchored")
    d.set_extra_state({**good, "student_split": "anchored"})
    d.prepare(log=lambda *_: None)   # the same options: restored
    assert d.grouping["student_split"] == "anchored"


def test_students_of_one_teacher_share_its_matrix_through_the_cache():
    model_t, images, t_shapes = teacher_and_images()
    calls = []

    def counted(n):
        calls.append(n)
        return images(n)
    cache = {}
    kw = dict(t_shapes=t_shapes, batch=8, model_t=model_t, images=counted, cka_images=24)
    first = build(s_shapes=S_SHAPES, cache=cache, cka_groups="2", **kw)
    second = build(s_shapes=S_SHAPES[:3], cache=cache, cka_groups="3", cka_student_split="proportional", **kw)
    for d in (first, second):
        d.prepare(log=lambda *_: None)
    assert len(calls) == 1 and first.grouping["teacher_cka"] == second.grouping["teacher_cka"]
    assert (first.grouping["n_groups"], second.grouping["n_groups"]) == (2, 3)
    other_pool = build(s_shapes=S_SHAPES, cache=cache, cka_pool=2, **kw)
    other_pool.prepare(log=lambda *_: None)
    fewer = build(s_shapes=S_SHAPES, cache=cache, **{**kw, "cka_images": 16})
    fewer.prepare(log=lambda *_: None)
    alone = build(s_shapes=S_SHAPES, cache={}, **kw)   # a single run: its own cache, the same matrix
    alone.prepare(log=lambda *_: None)
    assert len(calls) == 4 and alone.grouping["teacher_cka"] == first.grouping["teacher_cka"]
    assert other_pool.grouping["teacher_cka"] != first.grouping["teacher_cka"]


def test_figures_measurements_and_json_of_a_run(tmp_path):
    """Before training, every --cka_log_every epochs, at the middle and at the end: the student x teacher
    matrix is measured (the measure of helper.cka_diagnostics.group_cka), drawn beside the teacher's and
    written to the run folder (PNG, JSON with names) and TensorBoard; the kept matrices travel in the state."""
    torch.manual_seed(0)
    model_t, model_s = model_dict["resnet8"](num_classes=5).eval(), model_dict["resnet8"](num_classes=5)
    data = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    images = lambda n: [data[:8], data[8:16]]  # noqa: E731
    shapes = [tuple(f.shape[1:]) for f in model_s(data[:2], is_feat=True)[0]]  # 5 layers: the stage outputs
    kw = dict(s_shapes=shapes, t_shapes=shapes, batch=8, model_t=model_t, model_s=model_s, images=images,
              cka_images=16, cka_groups="2", cka_log_every=3, epochs=4)
    d = build(save_folder=str(tmp_path), **kw)
    d.prepare(log=lambda *_: None)
    model_s.train()
    w = FakeWriter()
    for epoch in range(1, 5):
        d.log_tensorboard(w, epoch)
    assert model_s.training and not model_t.training   # modes restored after each measurement
    m = json.load(open(tmp_path / "cka_matrices.json"))
    assert [(x["epoch"], x["label"]) for x in m["measurements"]] == [
        (0, "start (before training)"), (2, "middle (epoch 2)"), (3, None), (4, "end (epoch 4)")]
    assert [x["student_x_teacher"] is not None for x in m["measurements"]] == [True, True, False, True]
    assert m["teacher_layers"] == model_t.layer_names() and m["student_layers"] == model_s.layer_names()
    ref = group_cka(model_t, model_s, d.grouping, images(16))   # nothing trained: every measurement is this one
    for x in m["measurements"]:
        assert x["group_cka"] == pytest.approx(ref["group_cka"], abs=1e-5)
    assert np.allclose(m["measurements"][0]["student_x_teacher"], ref["student_x_teacher"], atol=1e-5)
    png = (tmp_path / "cka_matrices.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert [(tag, step) for tag, _, step, _ in w.images] == [("cka_group/matrices", e) for e in (2, 3, 4)]
    assert all(shape[2] == 3 and fmt == "HWC" for _, shape, _, fmt in w.images)
    assert w.scalars["cka_group/measured_group_1"] == pytest.approx(ref["group_cka"][1], abs=1e-5)
    again = build(**kw)
    again.load_state_dict(d.state_dict())
    assert again.measurements == d.measurements and "measurements" not in again.grouping
