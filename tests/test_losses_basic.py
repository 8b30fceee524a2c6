"""Feature-distillation losses (hint, attention, similarity, correlation, vid, rkd, pkt, nst, kdsvd, cosine).

Each loss is checked against the formula written again here, independently (plain loops, numpy or
other tensor ops, in float64), on fixed inputs; plus its minimum when student = teacher, which features
it reads, shape handling and refusals. Small tensors only: the whole file runs in seconds on CPU.
"""
from __future__ import annotations

import argparse
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo import DISTILLERS, build_distiller
from distiller_zoo.base import Batch, BuildContext, Outputs
from helper.errors import ConfigError

MINE = ("hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt", "nst", "kdsvd", "cosine")


# ---- building distillers from feature lists ------------------------------------------------------------

def make_opt(name, **kw):
    parser = argparse.ArgumentParser()
    DISTILLERS[name].add_arguments(parser)
    opt = parser.parse_args([])
    opt.kd_T, opt.hint_layer, opt.feat_dim, opt.batch_size, opt.learning_rate = 4.0, 1, 128, 4, 0.05
    for k, v in kw.items():
        setattr(opt, k, v)
    return opt


def outputs(feats):
    return Outputs(logits=torch.zeros(feats[0].shape[0], 10), feats=list(feats))


def build(name, s_feats, t_feats, model_s=None, **kw):
    """The distiller, built from probe outputs with the shapes (batch 2) of the given features."""
    ctx = BuildContext(opt=make_opt(name, **kw), s_probe=outputs([f[:2] for f in s_feats]),
                       t_probe=outputs([f[:2] for f in t_feats]), model_s=model_s or nn.Identity(),
                       model_t=nn.Identity(), num_classes=10, n_train=100, local_batch_size=s_feats[0].shape[0])
    return build_distiller(name, ctx)


def loss_of(d, s_feats, t_feats):
    batch = Batch(images=torch.zeros(s_feats[0].shape[0], 3, 8, 8), targets=torch.zeros(s_feats[0].shape[0]))
    return d(outputs(s_feats), outputs(t_feats), batch)


def lv(d, s_feats, t_feats) -> float:
    """The loss as a Python float."""
    return float(loss_of(d, s_feats, t_feats).detach())


def feats(shapes, seed, batch=4, relu=True):
    """A feature list with the given per-sample shapes, fixed random values (post-ReLU maps by default)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shp in shapes:
        x = torch.randn(batch, *shp, generator=g)
        out.append(x.relu() if relu and len(shp) == 3 else x)
    return out


# student / teacher lists: [stem, stage1, stage2, stage3, pooled]; channels and sizes differ
S_SHAPES = [(4, 8, 8), (6, 8, 8), (8, 4, 4), (10, 2, 2), (10,)]
T_SHAPES = [(5, 8, 8), (7, 4, 4), (9, 4, 4), (12, 4, 4), (12,)]


def d64(x):
    return x.detach().double()


def pool_blocks(x, h, w):
    """Average over non-overlapping blocks down to (h, w) (integer factors), by reshape (not adaptive pooling)."""
    b, c, hh, ww = x.shape
    return x.reshape(b, c, h, hh // h, w, ww // w).mean(dim=(3, 5))


def aligned(fs, ft):
    h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    return pool_blocks(fs, h, w), pool_blocks(ft, h, w)


# ---- attention (AT) ------------------------------------------------------------------------------------

def at_reference(s_feats, t_feats, mode="power"):
    total = 0.0
    for fs, ft in zip(s_feats[1:-1], t_feats[1:-1]):
        fs, ft = aligned(d64(fs), d64(ft))
        maps = []
        for f in (fs, ft):
            a = (f ** 2).sum(1) / f.shape[1] if mode == "power" else f.sum(1) / f.shape[1]
            a = a.reshape(a.shape[0], -1)
            maps.append(a / a.pow(2).sum(1, keepdim=True).sqrt())
        diff = maps[0] - maps[1]
        total += float((diff ** 2).sum()) / diff.numel()
    return total


@pytest.mark.parametrize("mode", ["power", "mean"])
def test_attention_golden(mode):
    s, t = feats(S_SHAPES, 1), feats(T_SHAPES, 2)
    d = build("attention", s, t, at_map=mode)
    assert lv(d, s, t) == pytest.approx(at_reference(s, t, mode), rel=1e-5)


def test_attention_mean_map_differs_from_power_map():
    s, t = feats(S_SHAPES, 1), feats(T_SHAPES, 2)
    a = lv(build("attention", s, t, at_map="power"), s, t)
    b = lv(build("attention", s, t, at_map="mean"), s, t)
    assert abs(a - b) > 1e-4


def test_attention_zero_when_equal_and_reads_only_stages():
    s = feats(S_SHAPES, 3)
    d = build("attention", s, s)
    assert lv(d, s, [f.clone() for f in s]) == pytest.approx(0.0, abs=1e-12)
    t = feats(T_SHAPES, 4)
    base = lv(d := build("attention", s, t), s, t)
    s2 = list(s)
    s2[0], s2[-1] = torch.rand_like(s[0]), torch.rand_like(s[-1])
    assert lv(d, s2, t) == base
    s2[2] = torch.rand_like(s[2])
    assert lv(d, s2, t) != pytest.approx(base, rel=1e-3)


def test_attention_pairs_stages_in_order_and_cuts_the_longer_list():
    s = feats([(4, 8, 8), (6, 8, 8), (8, 4, 4), (8,)], 5)                 # 2 stages
    t = feats([(4, 8, 8), (6, 8, 8), (8, 4, 4), (9, 2, 2), (9,)], 6)      # 3 stages
    d = build("attention", s, t)
    assert lv(d, s, t) == pytest.approx(at_reference(s, t[:3] + t[-1:]), rel=1e-5)


def test_attention_refuses_vector_stages():
    s = feats([(4,), (6,), (6,)], 7)
    with pytest.raises(ConfigError, match="attention"):
        build("attention", s, s)


# ---- similarity (SP) ------------------------------------------------------------------------------------

def sp_reference(fs, ft):
    def gram(f):
        x = d64(f).reshape(f.shape[0], -1)
        b = x.shape[0]
        g = torch.zeros(b, b, dtype=torch.float64)
        for i in range(b):
            for j in range(b):
                g[i, j] = (x[i] * x[j]).sum()
        return g / g.pow(2).sum(1, keepdim=True).sqrt()
    gs, gt = gram(fs), gram(ft)
    return float(((gt - gs) ** 2).sum()) / fs.shape[0] ** 2


def test_similarity_golden_and_features():
    s, t = feats(S_SHAPES, 8, batch=5), feats(T_SHAPES, 9, batch=5)
    d = build("similarity", s, t)
    value = lv(d, s, t)
    assert value == pytest.approx(sp_reference(s[-2], t[-2]), rel=1e-5)
    assert value > 1e-4
    s2 = list(s)
    s2[-1], s2[1] = torch.rand_like(s[-1]), torch.rand_like(s[1])
    assert lv(d, s2, t) == value
    assert lv(d, s, [f.clone() for f in s]) == pytest.approx(0.0, abs=1e-12)


# ---- pkt ------------------------------------------------------------------------------------------------

def pkt_reference(fs, ft, eps=1e-7):
    def prob(f):
        x = d64(f).reshape(f.shape[0], -1)
        b = x.shape[0]
        p = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                xi = x[i] / (x[i].norm() + eps)
                xj = x[j] / (x[j].norm() + eps)
                p[i, j] = (float((xi * xj).sum()) + 1) / 2
        return p / p.sum(1, keepdims=True)
    ps, pt = prob(fs), prob(ft)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def test_pkt_golden_zero_and_features():
    s, t = feats(S_SHAPES, 10, batch=6), feats(T_SHAPES, 11, batch=6)
    d = build("pkt", s, t)
    value = lv(d, s, t)
    assert value == pytest.approx(pkt_reference(s[-1], t[-1]), rel=1e-4)
    assert value > 0
    s2 = s[:-1] + [t[-1].clone()]
    assert lv(d, s2, t) == pytest.approx(0.0, abs=1e-9)
    s3 = [torch.rand_like(f) for f in s[:-1]] + [s[-1]]
    assert lv(d, s3, t) == value


# ---- rkd ------------------------------------------------------------------------------------------------

def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def rkd_reference(fs, ft, w_d=25.0, w_a=50.0):
    xs, xt = d64(fs).reshape(fs.shape[0], -1).numpy(), d64(ft).reshape(ft.shape[0], -1).numpy()
    b = xs.shape[0]

    def dist(x):
        m = np.array([[np.linalg.norm(x[i] - x[j]) if i != j else 0.0 for j in range(b)] for i in range(b)])
        return m / m[m > 0].mean()

    def unit(v):
        n = np.linalg.norm(v)
        return v / n if n > 1e-12 else np.zeros_like(v)

    def angles(x):
        out = np.zeros((b, b, b))
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    out[j, i, k] = unit(x[i] - x[j]) @ unit(x[k] - x[j])
        return out

    ds, dt = dist(xs), dist(xt)
    as_, at = angles(xs), angles(xt)
    l_d = np.mean([huber(a, c) for a, c in zip(ds.ravel(), dt.ravel())])
    l_a = np.mean([huber(a, c) for a, c in zip(as_.ravel(), at.ravel())])
    return w_d * l_d + w_a * l_a


def test_rkd_golden_weights_zero_and_scale_invariance():
    s, t = feats(S_SHAPES, 12, batch=5), feats(T_SHAPES, 13, batch=5)
    d = build("rkd", s, t)
    value = lv(d, s, t)
    assert value == pytest.approx(rkd_reference(s[-1], t[-1]), rel=1e-4)
    d2 = build("rkd", s, t, rkd_w_dist=1.0, rkd_w_angle=0.0)
    assert lv(d2, s, t) == pytest.approx(rkd_reference(s[-1], t[-1], 1.0, 0.0), rel=1e-4)
    scaled = s[:-1] + [3.0 * s[-1]]
    assert lv(d, scaled, t) == pytest.approx(value, rel=1e-4)
    same = s[:-1] + [t[-1].clone()]
    assert lv(d, same, t) == pytest.approx(0.0, abs=1e-6)


def test_rkd_batch_of_one_is_zero_not_nan():
    s, t = feats(S_SHAPES, 14, batch=1), feats(T_SHAPES, 15, batch=1)
    d = build("rkd", feats(S_SHAPES, 14), feats(T_SHAPES, 15))
    assert lv(d, s, t) == 0.0


# ---- correlation (CC) ------------------------------------------------------------------------------------

def test_correlation_golden_with_both_embeddings():
    s, t = feats(S_SHAPES, 16, batch=5), feats(T_SHAPES, 17, batch=5)
    d = build("correlation", s, t, feat_dim=7)
    ws, bs = d64(d.embed_s.linear.weight), d64(d.embed_s.linear.bias)
    wt, bt = d64(d.embed_t.linear.weight), d64(d.embed_t.linear.bias)
    assert ws.shape == (7, 10) and wt.shape == (7, 12)
    es = torch.einsum("bi,oi->bo", d64(s[-1]), ws) + bs
    et = torch.einsum("bi,oi->bo", d64(t[-1]), wt) + bt
    delta = (es - et).abs()
    ref = sum(float((delta[i] * delta[i + 1]).sum()) for i in range(4)) / 4
    assert lv(d, s, t) == pytest.approx(ref, rel=1e-5)


def test_correlation_trains_the_teacher_side_embedding():
    s, t = feats(S_SHAPES, 18), feats(T_SHAPES, 19)
    d = build("correlation", s, t)
    loss_of(d, s, t).backward()
    assert d.embed_t.linear.weight.grad is not None and d.embed_t.linear.weight.grad.abs().sum() > 0


# ---- vid ------------------------------------------------------------------------------------------------

def vid_reference(d, s_feats, t_feats):
    total = 0.0
    for pair, fs, ft in zip(d.pairs, s_feats[1:-1], t_feats[1:-1]):
        fs, ft = aligned(d64(fs), d64(ft))
        w = [d64(m.weight)[:, :, 0, 0] for m in pair.regressor if isinstance(m, nn.Conv2d)]
        h = torch.einsum("oc,bchw->bohw", w[0], fs).clamp(min=0)
        h = torch.einsum("oc,bchw->bohw", w[1], h).clamp(min=0)
        mu = torch.einsum("oc,bchw->bohw", w[2], h)
        var = torch.log(1 + torch.exp(d64(pair.log_scale))) + 1e-5
        var = var.view(1, -1, 1, 1)
        total += float((0.5 * ((mu - ft) ** 2 / var + torch.log(var))).mean())
    return total


def test_vid_golden_init_variance_and_modules():
    s, t = feats(S_SHAPES, 20), feats(T_SHAPES, 21)
    d = build("vid", s, t)
    assert len(d.pairs) == 3
    for pair, fs, ft in zip(d.pairs, s[1:-1], t[1:-1]):
        assert pair.regressor[0].in_channels == fs.shape[1] and pair.regressor[-1].out_channels == ft.shape[1]
        var = torch.log(1 + torch.exp(d64(pair.log_scale))) + 1e-5
        assert torch.allclose(var, torch.full_like(var, 5.0), atol=1e-5)
    with torch.no_grad():  # move off the initial values so the variance really enters
        for pair in d.pairs:
            pair.log_scale.uniform_(-1, 2)
    assert lv(d, s, t) == pytest.approx(vid_reference(d, s, t), rel=1e-5)


# ---- nst ------------------------------------------------------------------------------------------------

def nst_reference(s_feats, t_feats):
    total = 0.0
    for fs, ft in zip(s_feats[1:-1], t_feats[1:-1]):
        fs, ft = aligned(d64(fs), d64(ft))
        vs = fs.reshape(fs.shape[0], fs.shape[1], -1).numpy()
        vt = ft.reshape(ft.shape[0], ft.shape[1], -1).numpy()
        vs = vs / np.maximum(np.linalg.norm(vs, axis=2, keepdims=True), 1e-12)   # an all-zero channel stays 0
        vt = vt / np.maximum(np.linalg.norm(vt, axis=2, keepdims=True), 1e-12)

        def kmean(a, b):
            return np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(a.shape[0])
                            for i in range(a.shape[1]) for j in range(b.shape[1])])
        total += kmean(vt, vt) + kmean(vs, vs) - 2 * kmean(vs, vt)
    return total


def test_nst_golden_zero_and_features():
    s, t = feats(S_SHAPES, 22, batch=3), feats(T_SHAPES, 23, batch=3)
    d = build("nst", s, t)
    value = lv(d, s, t)
    assert value == pytest.approx(nst_reference(s, t), rel=1e-5)
    assert lv(d, s, [f.clone() for f in s]) == pytest.approx(0.0, abs=1e-5)
    s2 = [torch.rand_like(s[0])] + s[1:-1] + [torch.rand_like(s[-1])]
    assert lv(d, s2, t) == value
    assert not DISTILLERS["nst"].init_stage


# ---- kdsvd ----------------------------------------------------------------------------------------------

def kdsvd_reference(s_feats, t_feats, k=1):
    """numpy float64 SVD per sample; teacher sign canonical (entries sum >= 0); student vector with the
    largest |cosine| among its top k+3, sign-aligned; RBF exp(-d^2/8) between consecutive stages."""
    def top(f, n):
        out_v, out_s = [], []
        for x in d64(f).numpy():
            m = x.reshape(x.shape[0], -1).T                      # (HW, C)
            _, sv, vt = np.linalg.svd(m, full_matrices=False)
            out_v.append(vt[:n].T)                               # (C, n)
            out_s.append(sv[:n] / np.linalg.norm(sv[:n]))
        return np.stack(out_v), np.stack(out_s)

    total, prev = 0.0, None
    for fs, ft in zip(s_feats[1:-1], t_feats[1:-1]):
        vt, st = top(ft, k)
        vs_all, _ = top(fs, k + 3)
        b, c, _ = vt.shape
        vs = np.zeros_like(vt)
        for n in range(b):
            for j in range(k):
                if vt[n, :, j].sum() < 0:
                    vt[n, :, j] *= -1
                cos = [vs_all[n, :, i] @ vt[n, :, j] for i in range(vs_all.shape[2])]
                i = int(np.argmax(np.abs(cos)))
                vs[n, :, j] = vs_all[n, :, i] * (1.0 if cos[i] >= 0 else -1.0)
        vs, vt = vs * st[:, None, :], vt * st[:, None, :]
        if prev is not None:
            ps, pt = prev
            ks = np.exp(-((vs[:, :, None, :] - ps[:, None, :, :]) ** 2) / 8)
            kt = np.exp(-((vt[:, :, None, :] - pt[:, None, :, :]) ** 2) / 8)
            total += ((ks - kt) ** 2).sum() / b
        prev = (vs, vt)
    return total


KD_S = [(4, 8, 8), (6, 8, 8), (8, 4, 4), (10, 2, 2), (10,)]
KD_T = [(4, 8, 8), (6, 4, 4), (8, 4, 4), (10, 4, 4), (10,)]       # same channels, other sizes


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_golden(k):
    s, t = feats(KD_S, 24), feats(KD_T, 25)
    d = build("kdsvd", s, t, kdsvd_k=k)
    value = lv(d, s, t)
    assert value > 1e-6
    assert value == pytest.approx(kdsvd_reference(s, t, k), rel=1e-3)


def test_kdsvd_zero_when_equal_and_sign_invariant_student():
    s = feats(KD_S, 26)
    d = build("kdsvd", s, s)
    assert lv(d, s, [f.clone() for f in s]) == pytest.approx(0.0, abs=1e-6)
    t = feats(KD_T, 27)
    assert lv(d, [f * 2.0 for f in s], t) == pytest.approx(lv(d, s, t), rel=1e-4)


def test_kdsvd_refusals():
    with pytest.raises(ConfigError, match="channel"):
        build("kdsvd", feats(S_SHAPES, 28), feats(T_SHAPES, 29))
    one_stage = [(4, 8, 8), (6, 8, 8), (6,)]
    with pytest.raises(ConfigError, match="two stage"):
        build("kdsvd", feats(one_stage, 30), feats(one_stage, 31))
    with pytest.raises(ConfigError, match="kdsvd_k"):
        build("kdsvd", feats(KD_S, 32), feats(KD_T, 33), kdsvd_k=5)   # the 2x2 map has only 4 vectors


def test_kdsvd_gradient_stays_finite_on_degenerate_maps():
    t = feats(KD_T, 34)
    s = feats(KD_S, 35)
    s[2] = s[2][:, :1].expand(-1, 8, -1, -1).contiguous()   # rank-1 map: repeated zero singular values
    s = [f.clone().requires_grad_(True) for f in s]
    d = build("kdsvd", s, t)
    loss = loss_of(d, s, t)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(f.grad).all() for f in s if f.grad is not None)
    assert s[1].grad is not None and s[1].grad.abs().sum() > 0


# ---- cosine ---------------------------------------------------------------------------------------------

def cosine_reference(fs, ft):
    xs, xt = d64(fs).reshape(fs.shape[0], -1), d64(ft).reshape(ft.shape[0], -1)
    n = min(xs.shape[1], xt.shape[1])
    xs = xs.reshape(xs.shape[0], n, -1).mean(-1)
    xt = xt.reshape(xt.shape[0], n, -1).mean(-1)
    return float(nn.CosineEmbeddingLoss()(xs, xt, torch.ones(xs.shape[0], dtype=torch.float64)))


def test_cosine_seed004_shapes_teacher_pooled():
    s = feats([(8, 4, 4), (16, 2, 2), (16,)], 36, relu=False)     # 64 values
    t = feats([(8, 4, 4), (32, 2, 2), (32,)], 37, relu=False)     # 128 values -> pooled by 2
    d = build("cosine", s, t)
    value = lv(d, s, t)
    assert value == pytest.approx(cosine_reference(s[-2], t[-2]), rel=1e-5)
    # a teacher whose flattened map, averaged over consecutive pairs, is the student's: zero loss
    t_same = s[-2].flatten(1).repeat_interleave(2, dim=1).reshape(t[-2].shape)
    assert lv(d, s, [t[0], t_same, t[-1]]) == pytest.approx(0.0, abs=1e-6)


def test_cosine_student_pooled_and_refusal():
    s = feats([(8, 4, 4), (12, 4, 4), (12,)], 38, relu=False)     # 192 values -> pooled by 3
    t = feats([(8, 4, 4), (4, 4, 4), (4,)], 39, relu=False)       # 64
    d = build("cosine", s, t)
    assert lv(d, s, t) == pytest.approx(cosine_reference(s[-2], t[-2]), rel=1e-5)
    with pytest.raises(ConfigError, match="integer ratio"):
        build("cosine", feats([(8, 4, 4), (3, 2, 2), (3,)], 40), feats([(8, 4, 4), (2, 2, 2), (2,)], 41))


# ---- hint (FitNet) ----------------------------------------------------------------------------------------

def bn_train(x, bn):
    """BatchNorm in training mode from batch statistics (biased variance), float64."""
    dims = [0] + list(range(2, x.dim()))
    mean, var = x.mean(dim=dims, keepdim=True), x.var(dim=dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + bn.eps) * d64(bn.weight).view(shape) + d64(bn.bias).view(shape)


@pytest.mark.parametrize("s_hw,t_hw,kind,extra", [
    ((8, 8), (4, 4), nn.Conv2d, dict(stride=(2, 2), kernel_size=(3, 3))),
    ((4, 4), (8, 8), nn.ConvTranspose2d, dict(stride=(2, 2), kernel_size=(4, 4))),
    ((6, 6), (4, 4), nn.Conv2d, dict(stride=(1, 1), kernel_size=(3, 3))),
    ((4, 4), (4, 4), nn.Conv2d, dict(stride=(1, 1), kernel_size=(1, 1))),
    ((8, 6), (4, 3), nn.Conv2d, dict(stride=(2, 2), kernel_size=(3, 3))),
])
def test_hint_convreg_cases(s_hw, t_hw, kind, extra):
    s = feats([(3, 8, 8), (6, *s_hw), (6,)], 42)
    t = feats([(3, 8, 8), (5, *t_hw), (5,)], 43)
    d = build("hint", s, t)
    conv = d.regressor.conv
    assert type(conv) is kind
    for k, v in extra.items():
        assert getattr(conv, k) == v
    assert d.regressor(s[1]).shape == t[1].shape


def test_hint_convreg_golden():
    s = feats([(3, 8, 8), (6, 8, 8), (6,)], 44)
    t = feats([(3, 8, 8), (5, 4, 4), (5,)], 45)
    d = build("hint", s, t)
    conv, bn = d.regressor.conv, d.regressor.bn
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    y = F.conv2d(d64(s[1]), d64(conv.weight), d64(conv.bias), stride=2, padding=1)
    y = bn_train(y, bn).clamp(min=0)
    ref = float(((y - d64(t[1])) ** 2).sum()) / y.numel()
    assert lv(d, s, t) == pytest.approx(ref, rel=1e-5)


def test_hint_convbn_golden_seed004():
    s = feats([(3, 8, 8), (6, 4, 4), (6, 2, 2), (6,)], 46)
    t = feats([(3, 8, 8), (6, 4, 4), (9, 2, 2), (9,)], 47)
    d = build("hint", s, t, hint_layer=-2, hint_regressor="convbn")
    conv, bn = d.regressor.conv, d.regressor.bn
    assert conv.bias is None and conv.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.ReLU) for m in d.regressor.modules())
    y = bn_train(F.conv2d(d64(s[-2]), d64(conv.weight), padding=1), bn)
    ref = float(((y - d64(t[-2])) ** 2).mean())
    assert lv(d, s, t) == pytest.approx(ref, rel=1e-5)


def test_hint_linear_normalised_golden_seed000():
    s = feats([(3, 8, 8), (6, 4, 4), (16,)], 48)
    t = feats([(3, 8, 8), (6, 4, 4), (24,)], 49)
    d = build("hint", s, t, hint_layer=-1, hint_regressor="linear", hint_norm=True)
    lin, bn = d.regressor.linear, d.regressor.bn
    y = bn_train(d64(s[-1]) @ d64(lin.weight).t() + d64(lin.bias), bn)
    y = y / y.norm(dim=1, keepdim=True)
    x = d64(t[-1]) / d64(t[-1]).norm(dim=1, keepdim=True)
    ref = float(((y - x) ** 2).mean())
    assert lv(d, s, t) == pytest.approx(ref, rel=1e-5)
    plain = build("hint", s, t, hint_layer=-1, hint_regressor="linear")
    plain.load_state_dict(d.state_dict())
    assert lv(plain, s, t) != pytest.approx(ref, rel=1e-2)


def test_hint_reads_only_the_hint_layer():
    s, t = feats(S_SHAPES, 50), feats(T_SHAPES, 51)
    d = build("hint", s, t, hint_layer=2)
    base = lv(d, s, t)
    s2 = [torch.rand_like(f) if i != 2 else f for i, f in enumerate(s)]
    t2 = [torch.rand_like(f) if i != 2 else f for i, f in enumerate(t)]
    assert lv(d, s2, t2) == base


@pytest.mark.parametrize("kw,match", [
    (dict(hint_layer=7), "out of range"),
    (dict(hint_layer=-1), "vector"),                                             # convreg on pooled vectors
    (dict(hint_layer=1, hint_regressor="linear"), "needs vector features"),
    (dict(hint_layer=1, hint_regressor="convbn"), "spatial size"),               # 8x8 vs 4x4
])
def test_hint_refusals(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("hint", feats(S_SHAPES, 52), feats(T_SHAPES, 53), **kw)


def test_hint_refuses_a_size_pair_convreg_cannot_map():
    s = feats([(3, 8, 8), (6, 2, 2), (6,)], 54)
    t = feats([(3, 8, 8), (5, 6, 6), (5,)], 55)                                  # 2x2 -> 6x6: no rule
    with pytest.raises(ConfigError, match=r"ConvReg cannot map.*--hint_layer 1"):
        build("hint", s, t)
    t = feats([(3, 8, 8), (5, 4, 4), (5,)], 55)                                  # 2x2 -> 4x4: transposed conv
    assert type(build("hint", s, t).regressor.conv) is nn.ConvTranspose2d


class TinyNet(nn.Module):
    """A model following the feats contract: stem, two stages, pooled vector, classifier."""
    input_shape = (3, 8, 8)

    def __init__(self, with_shape=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)
        if not with_shape:
            self.input_shape = None

    def forward(self, x, is_feat=False, preact=False):
        f0 = self.stem(x)
        f1 = self.stage1(f0)
        f2 = self.stage2(f1)
        f3 = f2.mean((2, 3))
        out = self.fc(f3)
        return ([f0, f1, f2, f3], out) if is_feat else out


def test_hint_init_stage_trains_the_student_up_to_the_hint_layer():
    net, teacher = TinyNet(), TinyNet()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        s_feats, _ = net.eval()(x, is_feat=True)
        t_feats, _ = teacher.eval()(x, is_feat=True)
    d = build("hint", s_feats, t_feats, model_s=net, hint_layer=1)
    assert DISTILLERS["hint"].init_stage
    net.train()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    chosen = {id(p) for p in d.init_parameters(net)}
    names = {n for n, p in net.named_parameters() if id(p) in chosen}
    assert names == {n for n, _ in net.named_parameters() if n.startswith(("stem.", "stage1."))}
    assert all(id(p) in chosen for p in d.regressor.parameters())
    assert net.training                                   # mode restored
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items())   # probe moved no BN statistics
    assert float(d.init_loss(outputs(s_feats), outputs(t_feats), None).detach()) == lv(d, s_feats, t_feats)


def test_hint_init_stage_without_input_shape_falls_back_to_all_parameters():
    net = TinyNet(with_shape=False)
    with torch.no_grad():
        f, _ = net.eval()(torch.randn(2, 3, 8, 8), is_feat=True)
    d = build("hint", f, f, model_s=net, hint_layer=1)
    with pytest.warns(UserWarning, match="input_shape"):
        params = d.init_parameters(net)
    assert len(params) == len(list(net.parameters())) + len(list(d.regressor.parameters()))


# ---- every method: gradients, untouched inputs, float32 under bf16, published weights --------------------

def grad_case(name):
    """Feature lists (batch 4) the method accepts; kdsvd needs equal channels."""
    if name == "kdsvd":
        return feats(KD_S, 60), feats(KD_T, 61)
    if name == "cosine":
        return feats([(4, 8, 8), (6, 4, 4), (8, 2, 2), (8,)], 60), feats([(4, 8, 8), (6, 4, 4), (16, 2, 2), (16,)], 61)
    return feats(S_SHAPES, 60), feats(T_SHAPES, 61)


@pytest.mark.parametrize("name", MINE)
def test_gradients_reach_student_and_own_parameters_never_inputs_changed(name):
    s, t = grad_case(name)
    d = build(name, s, t)
    s = [f.clone().requires_grad_(True) for f in s]
    s_before, t_before = [f.detach().clone() for f in s], [f.clone() for f in t]
    loss = loss_of(d, s, t)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    for n, p in d.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {n}"
    assert all(torch.equal(a, b.detach()) for a, b in zip(s_before, s))
    assert all(torch.equal(a, b) for a, b in zip(t_before, t))


@pytest.mark.parametrize("name", MINE)
def test_bf16_features_give_a_float32_loss(name):
    s, t = grad_case(name)
    d = build(name, s, t)
    s16, t16 = [f.bfloat16() for f in s], [f.bfloat16() for f in t]
    with torch.autocast("cpu", dtype=torch.bfloat16):   # as under --amp: the modules run in bf16 too
        value = loss_of(d, s16, t16)
    assert value.dtype == torch.float32
    if any(True for _ in d.parameters()):   # bf16 regressors / embeddings: only close to the float32 loss
        assert float(value.detach()) == pytest.approx(lv(d, s, t), rel=0.1, abs=1e-3)
    else:   # no module: the math itself must run in float32, autocast or not
        ref = lv(d, [f.float() for f in s16], [f.float() for f in t16])
        assert float(value) == pytest.approx(ref, rel=1e-5, abs=1e-9)


PUBLISHED = {  # anchors_repdistiller.md section 3a, RepDistiller column; cosine: seeds/004; kdsvd: mdistiller
    "hint": (1, 0, 100), "attention": (1, 0, 1000), "similarity": (1, 0, 3000), "correlation": (1, 0, 0.02),
    "vid": (1, 0, 1), "rkd": (1, 0, 1), "pkt": (1, 0, 30000), "nst": (1, 0, 50), "kdsvd": (1, 0, 1),
    "cosine": (0.5, 0, 0.5),
}


@pytest.mark.parametrize("name", MINE)
def test_recommended_weights(name):
    m = re.fullmatch(r"-c (\S+) -d (\S+) -b (\S+)", DISTILLERS[name].recommended)
    assert m is not None
    assert tuple(float(v) for v in m.groups()) == PUBLISHED[name]


def test_method_flags_do_not_collide():
    parser = argparse.ArgumentParser()
    for name in MINE:
        DISTILLERS[name].add_arguments(parser)   # argparse raises on a duplicate option
    flags = [a.dest for a in parser._actions if a.dest != "help"]
    prefixes = {"hint_", "at_", "rkd_", "kdsvd_"}
    assert flags and all(any(f.startswith(p) for p in prefixes) for f in flags)
