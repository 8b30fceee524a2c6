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
import torch.nn.functional as F

from distiller_zoo import Batch, BuildContext, Outputs, build_distiller, get_distiller_class
from helper.errors import ConfigError
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


def build(s_shapes=S_SHAPES, t_shapes=T_SHAPES, batch=B, model_t=None, images=None, **over):
    ctx = BuildContext(opt=make_opt(**over), s_probe=probe(s_shapes), t_probe=probe(t_shapes),
                       model_s=torch.nn.Identity(), model_t=model_t or torch.nn.Identity(), num_classes=5,
                       n_train=100, local_batch_size=batch, plain_train_images=images)
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


# ---- refusals and diagnostics ------------------------------------------------------------------------------

@pytest.mark.parametrize("over,batch,needle", [
    ({}, 3, "needs at least 4"),
    ({"cka_groups": "9"}, B, "between 1 and"),
    ({"cka_groups": "two"}, B, "integer or 'auto'"),
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
        self.images.append((tag, img.shape, dataformats))


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
