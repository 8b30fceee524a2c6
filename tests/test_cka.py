"""Tests of helper/cka.py against closed forms, reference values and independent formulas.

Closed forms (invariances, identical and independent inputs), reference values of the CKA colab of
Kornblith et al. (2019) and numerical edge cases (fp16/bf16, constant features, small batches).
Reference formulas (feature-form CKA, explicit centring matrix H, Song's unbiased HSIC) are written
here in NumPy float64, independently of the library code.
"""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helper import cka
from helper.cka import (MinibatchCKA, bootstrap_cka, center_gram, centered_gram, cka_matrix, gram, hsic,
                        linear_cka, pool_features, unit_gram)

DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny; one intra-op thread keeps the tests fast on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


# ----------------------------------------------------------------------------- references

def ref_feature_cka(x, y):
    """||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) in float64 NumPy."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def ref_gram_cka(x, y):
    """<HKH, HLH> / (||HKH|| ||HLH||) with an explicit centring matrix H."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc))


def song_hsic1(k, l):
    """Song et al. (2012) unbiased HSIC, closed form, on Gram matrices K and L."""
    k = np.array(k, np.float64)
    l = np.array(l, np.float64)
    n = len(k)
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def np_feats(t):
    return t.detach().double().reshape(t.shape[0], -1).numpy()


def gaussian(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(gaussian(d, d, seed=seed))
    return q


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("dtype", DTYPES)
def test_kornblith_colab_reference_values(dtype):
    rs = np.random.RandomState(1337)  # same stream as np.random.seed(1337); np.random.randn
    x = rs.randn(100, 10)
    y = rs.randn(100, 10) + x
    xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
    assert linear_cka(xt, yt).item() == pytest.approx(0.55761, abs=1e-5)
    assert linear_cka(xt, yt, unbiased=True).item() == pytest.approx(0.51346, abs=1e-5)
    assert ref_feature_cka(x, y) == pytest.approx(0.55761, abs=1e-5)  # the reference itself


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_features_give_pearson_r2(dtype):
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype)
    y = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=dtype)
    assert linear_cka(x, y).item() == pytest.approx(0.64, abs=TOL[dtype])  # 1-D tensor = one feature
    assert linear_cka(x[:, None], y[:, None]).item() == pytest.approx(0.64, abs=TOL[dtype])
    a, b = gaussian(50, seed=1), gaussian(50, seed=2)
    b = b + 0.5 * a
    r = np.corrcoef(a.numpy(), b.numpy())[0, 1]
    assert linear_cka(a.to(dtype), b.to(dtype)).item() == pytest.approx(r * r, abs=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_centred_orthogonal_columns_give_zero(dtype):
    x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=dtype)
    y = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]], dtype=dtype)
    assert abs(linear_cka(x, y).item()) < TOL[dtype]
    assert abs(linear_cka(x + 3.0, 2.0 * y - 1.0).item()) < TOL[dtype]


def whitened(b=200, d=16, seed=3):
    """Columns orthonormal and centred: QR of a column-centred Gaussian matrix."""
    g = gaussian(b, d, seed=seed)
    q, _ = torch.linalg.qr(g - g.mean(0))
    return q


@pytest.mark.parametrize("dtype", DTYPES)
def test_whitened_closed_forms(dtype):
    x = whitened()
    d = x.shape[1]
    for k in (1, 4, 8, 16):
        got = linear_cka(x.to(dtype), x[:, :k].to(dtype)).item()
        assert got == pytest.approx(math.sqrt(k / d), abs=TOL[dtype])
    a = torch.zeros(d, d, dtype=torch.float64)
    a[:4, :4] = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    expected = 30.0 / (4.0 * math.sqrt(354.0))
    assert expected == pytest.approx(0.398621, abs=1e-6)
    assert linear_cka(x.to(dtype), (x @ a).to(dtype)).item() == pytest.approx(expected, abs=TOL[dtype])
    # the general closed form ||A||^2 / (sqrt(D) ||A^T A||) for a random A
    a = gaussian(d, d, seed=4)
    expected = (a.norm() ** 2 / (math.sqrt(d) * (a.T @ a).norm())).item()
    assert linear_cka(x.to(dtype), (x @ a).to(dtype)).item() == pytest.approx(expected, abs=TOL[dtype])


# ----------------------------------------------------------------------------- invariances

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_invariances(dtype, unbiased):
    x = gaussian(64, 32, seed=5)
    q = random_orthogonal(32, seed=6)
    shift = gaussian(1, 32, seed=7)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    variants = {"self": x, "orthogonal": x @ q, "scale": 7.3 * x, "shift": x + 5.0,
                "per-feature shift": x + shift, "all": -0.01 * (x @ q) + 100.0 * shift}
    for name, y in variants.items():
        got = linear_cka(x.to(dtype), y.to(dtype), unbiased=unbiased).item()
        assert got == pytest.approx(1.0, abs=tol), name
    # symmetric, and equal for any pair of transformed versions
    y = gaussian(64, 20, seed=8)
    a = linear_cka(x.to(dtype), y.to(dtype), unbiased=unbiased).item()
    b = linear_cka(y.to(dtype), x.to(dtype), unbiased=unbiased).item()
    c = linear_cka((3 * x @ q + 2).to(dtype), (y - 4).to(dtype), unbiased=unbiased).item()
    assert a == pytest.approx(b, abs=tol) and a == pytest.approx(c, abs=tol)


@pytest.mark.parametrize("unbiased", [False, True])
def test_extreme_scales_in_float32(unbiased):
    # tiny features would fall under the eps guard and huge ones overflow ||K||^2 in float32
    # without the pre-scaling; CKA and the direction of its gradient must not depend on scale
    x, y = gaussian(6, 3, seed=10).float(), gaussian(6, 2, seed=11).float()
    ref, gref = value_and_grad(x, y, unbiased=unbiased)
    for c in (1e-7, 1e-4, 1e4, 1e11):
        v, g = value_and_grad(c * x, y, unbiased=unbiased)
        assert v.item() == pytest.approx(ref.item(), abs=1e-5), c
        assert torch.isfinite(g).all() and torch.allclose(g * c, gref, rtol=1e-3, atol=1e-5), c


@pytest.mark.parametrize("unbiased", [False, True])
def test_not_invariant_to_anisotropic_scaling(unbiased):
    x = gaussian(64, 32, seed=9)
    a = torch.diag(torch.linspace(0.1, 10.0, 32, dtype=torch.float64))
    assert linear_cka(x, x @ a, unbiased=unbiased).item() < 0.99


# ----------------------------------------------------------------------------- HSIC, centring

@pytest.mark.parametrize("n", [4, 5, 9, 30])
def test_unbiased_hsic_equals_song_formula(n):
    for seed in range(5):
        x = gaussian(n, 7, seed=100 + seed) + 2.0
        y = torch.relu(gaussian(n, 3, seed=200 + seed)) + 0.3 * x[:, :3]
        k, l = np_feats(x) @ np_feats(x).T, np_feats(y) @ np_feats(y).T
        want = song_hsic1(k, l)
        assert hsic(x, y, unbiased=True).item() == pytest.approx(want, rel=1e-10, abs=1e-12)
        # self-HSIC_1 is a sum of squares, never negative
        assert hsic(x, x, unbiased=True).item() >= 0.0
        assert song_hsic1(k, k) == pytest.approx(hsic(x, x, unbiased=True).item(), rel=1e-10)
        # debiased CKA from Song's formula
        want_cka = want / math.sqrt(song_hsic1(k, k) * song_hsic1(l, l))
        assert linear_cka(x, y, unbiased=True).item() == pytest.approx(want_cka, abs=1e-9)


def test_biased_hsic_and_centring_match_explicit_h():
    x = torch.relu(gaussian(12, 9, seed=11)) + 1.0
    y = gaussian(12, 4, seed=12)
    n = 12
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = np_feats(x) @ np_feats(x).T, np_feats(y) @ np_feats(y).T
    assert np.allclose(gram(x).numpy(), k, atol=1e-12)
    assert np.allclose(centered_gram(x).numpy(), h @ k @ h, atol=1e-10)
    assert np.allclose(center_gram(gram(x)).numpy(), h @ k @ h, atol=1e-10)
    assert np.allclose(center_gram(gram(x), unbiased=True).numpy(),
                       centered_gram(x, unbiased=True).numpy(), atol=1e-10)
    assert hsic(x, y).item() == pytest.approx(np.trace(k @ h @ l @ h) / (n - 1) ** 2, rel=1e-10)
    g = unit_gram(x, unbiased=False)
    assert g.shape == (n * n,) and g.norm().item() == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- forms agree

def layer_set(seed, b=48):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 16, 8, 8, generator=g)
    return [torch.relu(base), torch.relu(base[:, :, ::2, ::2] + 0.5 * torch.randn(b, 16, 4, 4, generator=g)),
            torch.randn(b, 40, generator=g) + base.mean((2, 3)).repeat(1, 3)[:, :40],
            torch.randn(b, 8, 3, 3, generator=g) * 100.0]


def test_gram_form_feature_form_matrix_and_pairwise_agree_float32():
    a, b = layer_set(13), layer_set(14)[:3]
    m = cka_matrix(a, b)
    assert m.shape == (4, 3) and m.dtype == torch.float32
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            ref = ref_feature_cka(np_feats(x), np_feats(y))
            assert ref == pytest.approx(ref_gram_cka(np_feats(x), np_feats(y)), abs=1e-12)
            assert abs(m[i, j].item() - ref) < 1e-6
            assert abs(linear_cka(x, y).item() - ref) < 1e-6


def test_unbiased_matrix_matches_pairwise_and_song():
    a = layer_set(15)
    m = cka_matrix(a, unbiased=True)
    assert torch.allclose(m, m.T, atol=1e-6)
    assert torch.allclose(torch.diagonal(m), torch.ones(4), atol=1e-6)
    for i, x in enumerate(a):
        for j, y in enumerate(a):
            k, l = np_feats(x) @ np_feats(x).T, np_feats(y) @ np_feats(y).T
            ref = song_hsic1(k, l) / math.sqrt(song_hsic1(k, k) * song_hsic1(l, l))
            assert abs(m[i, j].item() - ref) < 1e-6
            assert abs(linear_cka(x, y, unbiased=True).item() - ref) < 1e-6


def test_cka_matrix_gradient_flows_only_to_inputs_that_need_it():
    a = [t.clone().requires_grad_(True) for t in layer_set(16)[:2]]
    with torch.no_grad():
        b = [t * 2.0 for t in layer_set(17)[:3]]
    m = cka_matrix(a, b)
    assert m.requires_grad and m.shape == (2, 3)
    (1.0 - m.mean()).backward()
    for t in a:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="batch"):
        cka_matrix(a, [torch.randn(7, 3)])


# ----------------------------------------------------------------------------- bias

def test_estimator_bias_on_independent_gaussians():
    b, d, trials = 64, 64, 20
    biased, unbiased = [], []
    for t in range(trials):
        x, y = gaussian(b, d, seed=1000 + t), gaussian(b, d, seed=2000 + t)
        biased.append(linear_cka(x, y).item())
        unbiased.append(linear_cka(x, y, unbiased=True).item())
    assert abs(np.mean(biased) - d / (b + d)) < 0.01
    u = np.array(unbiased)
    assert abs(u.mean()) < 3 * u.std(ddof=1) / math.sqrt(trials)
    assert u.std() < 0.05  # the unbiased estimator is close to 0, not to 0.5


# ----------------------------------------------------------------------------- degenerate

def value_and_grad(x, y, **kw):
    x = x.clone().requires_grad_(True)
    v = linear_cka(x, y, **kw)
    v.backward()
    return v.detach(), x.grad


def test_batch_of_one_and_two_are_finite_with_zero_gradient():
    v, g = value_and_grad(gaussian(1, 5, seed=20), gaussian(1, 3, seed=21))
    assert v.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    v, g = value_and_grad(gaussian(2, 5, seed=22), gaussian(2, 3, seed=23))
    assert v.item() == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(g).all() and g.abs().max().item() < 1e-10
    assert torch.isfinite(cka_matrix([gaussian(1, 4, seed=1)], [gaussian(1, 2, seed=2)])).all()


@pytest.mark.parametrize("unbiased", [False, True])
def test_constant_features_are_guarded(unbiased):
    for const in (torch.zeros(8, 6), torch.full((8, 6), 0.1), torch.full((8, 3, 2, 2), 1e4)):
        y = gaussian(8, 4, seed=24).float()
        v, g = value_and_grad(const, y, unbiased=unbiased)
        assert v.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
        # and as the other argument
        v, g = value_and_grad(y, const, unbiased=unbiased)
        assert v.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    m = cka_matrix([torch.zeros(8, 6), gaussian(8, 4, seed=25)], unbiased=unbiased)
    assert torch.isfinite(m).all() and m[0, 0].item() == 0.0 and m[1, 1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_do_not_overflow(dtype):
    # post-ReLU features whose Gram entries (~1.3e5) exceed the fp16 range (65504)
    g = torch.Generator().manual_seed(26)
    x32 = torch.relu(torch.randn(16, 64, 8, 8, generator=g)) * 8.0
    y32 = x32 + torch.randn(16, 64, 8, 8, generator=g)
    assert (x32.flatten(1) ** 2).sum(1).max() > 65504
    x, y = x32.to(dtype).requires_grad_(True), y32.to(dtype)
    v = linear_cka(x, y)
    v.backward()
    assert v.dtype == torch.float32 and torch.isfinite(v) and torch.isfinite(x.grad).all()
    assert x.grad.dtype == dtype
    ref = ref_feature_cka(np_feats(x.detach()), np_feats(y))  # same rounded inputs, float64
    assert abs(v.item() - ref) < 1e-5
    vu = linear_cka(x.detach(), y, unbiased=True)
    assert torch.isfinite(vu)
    m = cka_matrix([x.detach(), y], unbiased=True)
    assert torch.isfinite(m).all()


def test_autocast_region_does_not_lower_precision():
    x, y = gaussian(32, 300, seed=27).float(), gaussian(32, 300, seed=28).float()
    y = y + 0.1 * x
    ref = linear_cka(x, y).item()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16  # autocast is really on here
        v = linear_cka(x, y)
        m = cka_matrix([x], [y])
    assert v.dtype == torch.float32 and m.dtype == torch.float32
    assert abs(v.item() - ref) < 1e-6 and abs(m.item() - ref) < 1e-6


def test_too_small_batch_for_unbiased_raises():
    x = gaussian(3, 5, seed=29)
    for call in (lambda: linear_cka(x, x, unbiased=True), lambda: cka_matrix([x], unbiased=True),
                 lambda: hsic(x, x, unbiased=True), lambda: MinibatchCKA().update([x])):
        with pytest.raises(ValueError, match="at least 4"):
            call()
    assert torch.isfinite(linear_cka(x, x))  # the biased estimator still answers
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(gaussian(5, 2, seed=1), gaussian(6, 2, seed=1))


# ----------------------------------------------------------------------------- autograd

@pytest.mark.parametrize("b", [4, 8])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck(b, unbiased):
    x = gaussian(b, 3, 2, seed=30 + b).requires_grad_(True)
    y = (gaussian(b, 5, seed=40 + b) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: linear_cka(p, q, unbiased=unbiased), (x, y))
    assert torch.autograd.gradcheck(lambda p, q: cka_matrix([p, q], unbiased=unbiased), (x, y))


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_is_orthogonal_to_x_and_scales_inversely(unbiased):
    x, y = gaussian(16, 10, seed=50), gaussian(16, 6, seed=51)
    v, g = value_and_grad(x, y, unbiased=unbiased)
    assert g.norm().item() > 1e-3
    assert abs((g * x).sum().item()) < 1e-10 * g.norm().item() * x.norm().item() + 1e-12
    # translation invariance: each feature's gradient sums to zero over the batch
    assert g.sum(0).abs().max().item() < 1e-10
    c = 37.0
    v2, g2 = value_and_grad(c * x, y, unbiased=unbiased)
    assert v2.item() == pytest.approx(v.item(), abs=1e-12)
    assert torch.allclose(g2, g / c, rtol=1e-8, atol=1e-14)


# ----------------------------------------------------------------------------- minibatch CKA

def minibatch_reference(batches_a, batches_b):
    """sum_t HSIC_1 / sqrt(sum_t HSIC_1(K,K) sum_t HSIC_1(L,L)) with Song's formula."""
    la, lb = len(batches_a[0]), len(batches_b[0])
    cross, sa, sb = np.zeros((la, lb)), np.zeros(la), np.zeros(lb)
    for fa, fb in zip(batches_a, batches_b):
        ka = [np_feats(f) @ np_feats(f).T for f in fa]
        kb = [np_feats(f) @ np_feats(f).T for f in fb]
        for i in range(la):
            sa[i] += song_hsic1(ka[i], ka[i])
            for j in range(lb):
                cross[i, j] += song_hsic1(ka[i], kb[j])
        for j in range(lb):
            sb[j] += song_hsic1(kb[j], kb[j])
    return cross / np.sqrt(sa[:, None] * sb[None, :])


def test_minibatch_cka_matches_formula_and_is_not_mean_of_batches():
    g = torch.Generator().manual_seed(60)
    n = 100
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    a = [z @ torch.randn(6, 12, generator=g, dtype=torch.float64),
         torch.relu(z @ torch.randn(6, 20, generator=g, dtype=torch.float64)) * 50.0]
    b = [z[:, :3] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64),
         torch.randn(n, 4, 2, 2, generator=g, dtype=torch.float64),
         z * 1e-3]
    sizes = [30, 30, 30, 10]  # an uneven last batch: each batch weighs by its own 1/(n(n-3))
    edges = np.cumsum([0] + sizes)
    batches_a = [[f[s:e] for f in a] for s, e in zip(edges[:-1], edges[1:])]
    batches_b = [[f[s:e] for f in b] for s, e in zip(edges[:-1], edges[1:])]

    acc = MinibatchCKA()
    for fa, fb in zip(batches_a, batches_b):
        acc.update(fa, fb)
    got = acc.compute()
    assert got.shape == (2, 3) and got.dtype == torch.float64
    assert acc.num_batches == 4 and acc.num_examples == n
    want = minibatch_reference(batches_a, batches_b)
    assert np.allclose(got.numpy(), want, atol=1e-10)
    mean_of_batches = np.mean([cka_matrix(fa, fb, unbiased=True).numpy() for fa, fb
                               in zip(batches_a, batches_b)], axis=0)
    assert np.abs(got.numpy() - mean_of_batches).max() > 1e-3

    # one batch holding everything = the plain unbiased CKA
    one = MinibatchCKA()
    one.update(a, b)
    assert np.allclose(one.compute().numpy(), cka_matrix(a, b, unbiased=True).numpy(), atol=1e-10)


def test_a_bootstrap_replicate_is_the_minibatch_cka_of_the_batches_it_drew():
    """keep_batches: each batch's terms are that batch's HSIC_1 terms (their sums give compute()); a
    bootstrap replicate is the minibatch CKA (Song's formula, written here) of a draw of the batches with
    replacement, every draw of T from T equally likely."""
    g = torch.Generator().manual_seed(67)
    n, sizes = 64, [16, 16, 16, 16]
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    a = [z @ torch.randn(5, 9, generator=g, dtype=torch.float64), torch.relu(z)]
    b = [z[:, :2] + torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)]
    edges = np.cumsum([0] + sizes)
    batches_a = [[f[s:e] for f in a] for s, e in zip(edges[:-1], edges[1:])]
    batches_b = [[f[s:e] for f in b] for s, e in zip(edges[:-1], edges[1:])]
    acc = MinibatchCKA(keep_batches=True)
    for fa, fb in zip(batches_a, batches_b):
        acc.update(fa, fb)
    terms = acc.batch_terms()
    assert terms["cross"].shape == (4, 2, 2) and terms["self_a"].shape == (4, 2) and terms["self_b"].shape == (4, 2)
    assert np.allclose(cka.cka_from_sums(terms["cross"].sum(0), terms["self_a"].sum(0), terms["self_b"].sum(0)),
                       acc.compute().numpy(), atol=1e-12)
    for t in range(4):  # one batch's terms alone: that batch's plain unbiased CKA
        assert np.allclose(cka.cka_from_sums(terms["cross"][t], terms["self_a"][t], terms["self_b"][t]),
                           cka_matrix(batches_a[t], batches_b[t], unbiased=True).numpy(), atol=1e-10)
    draws = [c for c in itertools.product(range(5), repeat=4) if sum(c) == 4]   # the 35 count vectors
    want = {c: minibatch_reference([x for x, k in zip(batches_a, c) for _ in range(k)],
                                   [y for y, k in zip(batches_b, c) for _ in range(k)]) for c in draws}
    reps = bootstrap_cka(terms, 4000, seed=3)
    assert reps.shape == (4000, 2, 2)
    keys = list(want)
    gap = np.abs(reps[:, None] - np.stack([want[c] for c in keys])[None]).max(axis=(2, 3))   # (4000, 35)
    assert gap.min(axis=1).max() < 1e-10, "a replicate that is no draw of the batches"
    seen = {}
    for i in gap.argmin(axis=1):
        seen[keys[i]] = seen.get(keys[i], 0) + 1
    assert seen.get((1, 1, 1, 1), 0) / 4000 == pytest.approx(24 / 256, abs=0.02)   # 4!/4^4
    assert sum(seen.get(c, 0) for c in [(4, 0, 0, 0), (0, 4, 0, 0), (0, 0, 4, 0), (0, 0, 0, 4)]) / 4000 \
        == pytest.approx(4 / 256, abs=0.01)
    assert np.array_equal(bootstrap_cka(terms, 5, seed=3), reps[:5])   # seeded
    with pytest.raises(ValueError, match="keep_batches=True"):
        MinibatchCKA().batch_terms()
    with pytest.raises(ValueError, match="replicates must be >= 1"):
        bootstrap_cka(terms, 0)


def test_minibatch_cka_square_mode_and_degenerate_layer():
    g = torch.Generator().manual_seed(61)
    acc = MinibatchCKA()
    for _ in range(3):
        x = torch.randn(16, 8, 4, 4, generator=g)
        feats = [x, torch.relu(x), torch.zeros(16, 5), x.half() * 300.0]
        acc.update(feats)
    s = acc.compute()
    assert s.shape == (4, 4) and torch.isfinite(s).all()
    assert torch.allclose(s, s.T, atol=1e-12)
    assert torch.allclose(torch.diagonal(s)[[0, 1, 3]], torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert s[2].abs().max().item() == 0.0
    assert s[0, 3].item() == pytest.approx(1.0, abs=1e-3)  # fp16 copy, scaled: no overflow
    with pytest.raises(ValueError, match="same way"):
        acc.update(feats[:2], feats[:2])
    with pytest.raises(ValueError, match="before any update"):
        MinibatchCKA().compute()


# ----------------------------------------------------------------------------- pooling

def test_pool_features():
    x = gaussian(2, 3, 8, 8, seed=70)
    p = pool_features(x, 4)
    assert p.shape == (2, 3, 4, 4)
    assert torch.allclose(p, F.avg_pool2d(x, 2))
    assert pool_features(x, 8) is x and pool_features(x, None) is x
    flat = gaussian(2, 10, seed=71)
    assert pool_features(flat, 4) is flat
    assert pool_features(gaussian(2, 3, 8, 2, seed=72), 4).shape == (2, 3, 4, 2)
    assert pool_features(x, np.int64(2)).shape == (2, 3, 2, 2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="pool size"):
            pool_features(x, bad)


def test_module_constants():
    assert cka.MIN_BATCH_UNBIASED == 4 and 0 < cka.DEFAULT_EPS <= 1e-8
