"""CRD's negatives (crd/memory.py ClassNegativeSampler): RepDistiller's draw, K distinct samples of the
other classes per anchor (i.i.d. only when fewer than K exist), by both exact ways (keys, stream); the
i.i.d. option; determinism per (seed, draw); and the CRD loss over many draws against RepDistiller's own
``np.random.choice`` draw, re-typed here. CPU, small sizes."""
from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import crd.memory as memory_mod
from crd.criterion import nce_loss
from crd.memory import ClassNegativeSampler, ContrastMemory
from dataset.contrast import ContrastSampler
from distiller_zoo import BuildContext, Outputs, build_distiller, get_distiller_class
from helper.errors import ConfigError

VIAS = ("keys", "stream")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared CPU: one intra-op thread is faster and does not fight other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shuffled(sizes, seed=0):
    """Labels with ``sizes[c]`` samples of class c, in a random order (so the sorted order matters)."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def sampler(targets, k, via=None, **kw):
    s = ClassNegativeSampler(targets, k, **kw)
    if via is not None:
        s.via = via
    return s


def crd(targets, k, **over):
    """The crd distiller on 6-d student / 5-d teacher vectors, run seed 3."""
    parser = argparse.ArgumentParser()
    get_distiller_class("crd").add_arguments(parser)
    opt = parser.parse_args([])
    for key, v in dict(feat_dim=8, nce_k=k, nce_t=0.07, nce_m=0.5, mode="exact", seed=3, **over).items():
        setattr(opt, key, v)
    probe = [Outputs(logits=torch.zeros(2, 5), feats=[torch.zeros(2, dim)]) for dim in (6, 5)]
    return build_distiller("crd", BuildContext(opt, *probe, torch.nn.Identity(), torch.nn.Identity(), 5,
                                               len(targets), 25, train_targets=targets))


def others(targets, c):
    """RepDistiller's ``cls_negative[c]``: the dataset indices of every other class."""
    return np.nonzero(targets.numpy() != c)[0]


@pytest.mark.parametrize("via", VIAS)
def test_distinct_negatives_never_the_anchor_class(via):
    targets = shuffled((40, 25, 60, 15, 35))                 # pools 135, 150, 115, 160, 140
    s = sampler(targets, 100, via)
    assert s.subsets == "all"
    index = torch.arange(len(targets)).repeat(3)
    idx = s.draw(targets[index], index, torch.Generator().manual_seed(1))
    assert idx.shape == (len(index), 101) and idx.dtype == torch.int64
    assert torch.equal(idx[:, 0], index)
    neg = idx[:, 1:]
    assert int(neg.min()) >= 0 and int(neg.max()) < len(targets)
    assert not (targets[neg] == targets[index].unsqueeze(1)).any()
    srt = neg.sort(1).values
    assert (srt[:, 1:] != srt[:, :-1]).all()                 # K distinct per row


@pytest.mark.parametrize("via", VIAS)
def test_replace_rule_row_by_row(via):
    """replace = K > len(cls_negative[y]): rows whose class leaves fewer than K negatives draw i.i.d."""
    targets = shuffled((40, 25, 60, 15, 35))
    s = sampler(targets, 138, via, mode="relax")              # pools 135 and 115 are short of 138
    assert s.subsets == "some"
    index = torch.arange(len(targets)).repeat(4)
    y = targets[index]
    idx = s.draw(y, index, torch.Generator().manual_seed(2))
    assert torch.equal(targets[idx[:, 0]], y)                # relax: a positive of the anchor's class
    neg = idx[:, 1:]
    assert not (targets[neg] == y.unsqueeze(1)).any()
    distinct = torch.tensor([len(set(row.tolist())) for row in neg])
    short = (y == 0) | (y == 2)
    assert (distinct[~short] == 138).all()
    assert (distinct[short] < 138).all()                     # 138 draws among 135 (or 115) must repeat
    # K equal to the smallest pool still draws subsets (the whole pool); K above every pool, and the i.i.d.
    # option: i.i.d. everywhere
    whole = sampler(targets, 115, via)
    assert whole.subsets == "all"
    anchors = torch.nonzero(targets == 2).flatten()
    rows = whole.draw(targets[anchors], anchors, torch.Generator().manual_seed(2))[:, 1:].sort(1).values
    assert (rows == torch.from_numpy(others(targets, 2))).all()
    assert sampler(targets, 161).subsets == "none"
    iid = sampler(targets, 20, negatives="iid")
    assert iid.subsets == "none" and iid.via is None
    rows = iid.draw(y, index, torch.Generator().manual_seed(3))[:, 1:]
    assert any(len(set(row.tolist())) < 20 for row in rows)  # 2 repeats expected per row at 20 of ~140


@pytest.mark.parametrize("via,stream_len", [("keys", None), ("stream", None), ("stream", 1)])
def test_every_k_subset_equally_likely(via, stream_len):
    """Anchor class 1 (the middle block of the sorted order) leaves 6 negatives; K = 3: each of the 20
    subsets must come up 1/20 of the time (chi-square), and each negative 1/2 of the time."""
    targets = shuffled((2, 3, 4), seed=4)
    s = sampler(targets, 3, via)
    if stream_len is not None:                                # extend the stream one draw at a time
        s.stream_len = stream_len
    anchor = int(torch.nonzero(targets == 1)[0])
    index = torch.full((4000,), anchor)
    neg = s.draw(targets[index], index, torch.Generator().manual_seed(5))[:, 1:]
    pool = others(targets, 1).tolist()
    subsets = {c: i for i, c in enumerate(itertools.combinations(pool, 3))}
    counts = np.bincount([subsets[tuple(sorted(row))] for row in neg.tolist()], minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-3
    per_sample = torch.bincount(neg.flatten(), minlength=len(targets))[pool].numpy()
    assert stats.chisquare(per_sample).pvalue > 1e-3


@pytest.mark.parametrize("negatives,via", [("distinct", "keys"), ("distinct", "stream"), ("iid", None)])
def test_uniform_over_the_other_classes(negatives, via):
    targets = shuffled((40, 25, 60, 15, 35), seed=6)
    s = sampler(targets, 60, via, negatives=negatives)
    index = torch.nonzero(targets == 3).flatten().repeat(30)  # 450 anchors of class 3, pool 160
    neg = s.draw(targets[index], index, torch.Generator().manual_seed(7))[:, 1:]
    pool = others(targets, 3)
    counts = torch.bincount(neg.flatten(), minlength=len(targets)).numpy()
    assert counts[targets.numpy() == 3].sum() == 0
    assert stats.chisquare(counts[pool]).pvalue > 1e-3


@pytest.mark.parametrize("negatives,via", [("distinct", "keys"), ("distinct", "stream"), ("iid", None)])
def test_same_generator_seed_same_draw(negatives, via, monkeypatch):
    targets = shuffled((40, 25, 60, 15, 35))
    monkeypatch.setattr(memory_mod, "_KEYS_PER_CHUNK", 3 * len(targets))   # keys in chunks of 3 rows
    s = sampler(targets, 50, via, negatives=negatives, mode="relax")
    index = torch.arange(0, 175, 7)
    draw = [s.draw(targets[index], index, torch.Generator().manual_seed(seed)) for seed in (8, 8, 9)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    # the distiller seeds draw d of run seed s with draw_seed(s, d): a restored counter repeats the stream
    d = crd(targets, 50, crd_negatives=negatives)
    assert d.sampler.negatives == negatives
    first, second = d.contrast_indices(targets[index], index), d.contrast_indices(targets[index], index)
    twin = crd(targets, 50, crd_negatives=negatives)
    twin.set_extra_state({"draws": 1})
    assert torch.equal(twin.contrast_indices(targets[index], index), second)
    assert not torch.equal(first, second)


def test_iid_option_is_the_i_i_d_draw_written_out():
    """``iid``: u ~ randint(2^62) % P per (row, k), the u-th sample of the other classes in label-sorted order
    (the draw CRD used before ``distinct``), from the same generator stream."""
    targets = shuffled((40, 25, 60, 15, 35))
    index = torch.arange(0, 175, 5)
    got = sampler(targets, 30, negatives="iid", mode="relax").draw(targets[index], index,
                                                                   torch.Generator().manual_seed(10))
    g = torch.Generator().manual_seed(10)
    u = torch.randint(0, 1 << 62, (len(index), 30), generator=g)
    u_pos = torch.randint(0, 1 << 62, (len(index),), generator=g)
    by_class = [sorted(np.nonzero(targets.numpy() == c)[0].tolist()) for c in range(5)]
    for row, (i, c) in enumerate(zip(index.tolist(), targets[index].tolist())):
        pool = [j for cc in range(5) if cc != c for j in by_class[cc]]
        assert got[row, 1:].tolist() == [pool[v % len(pool)] for v in u[row].tolist()]
        assert got[row, 0].item() == by_class[c][u_pos[row].item() % len(by_class[c])]


def test_which_way_and_the_options():
    """The rule M <= N / 8 picks ``stream`` for ImageNet's bank (1.28M, 1,000 classes) and for CIFAR-100 at
    K = 4,096, ``keys`` for CIFAR-100 at RepDistiller's K = 16,384; bad options are one ConfigError line."""
    cifar = torch.arange(50000) % 100
    assert sampler(cifar, 16384).via == "keys" and sampler(cifar, 4096).via == "stream"
    assert sampler(torch.arange(1281167) % 1000, 16384).via == "stream"
    mean, std = memory_mod.stream_moments(49500, 16384)
    assert mean == pytest.approx(49500 * math.log(49500 / (49500 - 16384)), rel=1e-3) and 60 < std < 75
    assert ContrastSampler(cifar[:200], 8, negatives="iid").sampler.negatives == "iid"
    for kw, flag in (({"negatives": "unique"}, "--crd_negatives"), ({"mode": "loose"}, "--mode"),
                     ({"k": 0}, "--nce_k")):
        with pytest.raises(ConfigError, match=flag):
            ContrastSampler(cifar[:200], **{"k": 8, **kw})
    with pytest.raises(ConfigError, match="--crd_negatives"):
        crd(torch.arange(24) % 4, 5, crd_negatives="unique")


def test_loss_statistics_distinct_iid_and_repdistillers_draw():
    """The CRD loss on fixed embeddings and a filled bank (d 128, T 0.07, N 1,200 in 6 classes, so P 1,000,
    and K 330: CIFAR's K / P) over 1,000 draws of a batch of 8 anchors, against its exact moments over the
    draws, written out from each row's P per-negative terms: the mean is the same for every way of drawing;
    the standard deviation is sqrt(K var / B^2) summed over rows for i.i.d. draws, times
    sqrt((P - K) / (P - 1)) = 0.819 for K-subsets. RepDistiller's ``np.random.choice`` draw and ``distinct``
    (keys and stream) must give the subset spread, ``iid`` the i.i.d. one (within 10%), every mean within 4
    standard errors. Measured: mean 15.0201 / 15.0191 / 15.0226 / 15.0195 (RepDistiller / keys / stream /
    iid; exact 15.0212), std 0.0414 / 0.0425 / 0.0414 / 0.0547 (exact 0.0421 for subsets, 0.0514 i.i.d.)."""
    C, per, K, B, R = 6, 200, 330, 8, 1000
    N, P = C * per, C * per - per
    targets = shuffled((per,) * C)
    torch.manual_seed(0)
    mem = ContrastMemory(128, N, T=0.07)
    gen = torch.Generator().manual_seed(11)
    for bank in (mem.memory_s, mem.memory_t):
        bank.copy_(F.normalize(torch.randn(N, 128, generator=gen), dim=1))
    v_s, v_t = (F.normalize(torch.randn(B, 128, generator=gen), dim=1) for _ in range(2))
    index = torch.arange(B) * (N // B)
    y = targets[index]
    mem(v_s, v_t, torch.randint(0, N, (B, K + 1), generator=gen))       # Z from a first batch, then fixed

    # exact moments: loss = -(1/B) sum_b [pos_b + sum_k term_b(neg_bk)], both views summed
    c, eps = K / N, 1e-7
    e_s = torch.exp(v_s.double() @ mem.memory_t.double().T / 0.07) / mem.Z[0].double()
    e_t = torch.exp(v_t.double() @ mem.memory_s.double().T / 0.07) / mem.Z[1].double()
    term = torch.log(c / (e_s + c + eps)) + torch.log(c / (e_t + c + eps))
    pos = torch.log(e_s / (e_s + c + eps)) + torch.log(e_t / (e_t + c + eps))
    mean, var_iid = 0.0, 0.0
    for b in range(B):
        pool = term[b, targets != y[b]]
        mean -= float(pos[b, index[b]] + K * pool.mean()) / B
        var_iid += K * float(pool.var(unbiased=False)) / B ** 2
    exact_std = {"iid": math.sqrt(var_iid), "subset": math.sqrt(var_iid * (P - K) / (P - 1))}

    def loss(idx):
        out_s, out_t = mem(v_s, v_t, idx)
        return (nce_loss(out_s, N) + nce_loss(out_t, N)).item()

    rng = np.random.RandomState(0)
    cls_negative = [others(targets, c) for c in range(C)]

    def repdistiller():   # CIFAR100InstanceSample.__getitem__, per anchor, mode 'exact'
        return torch.as_tensor(np.stack([np.hstack(([i], rng.choice(cls_negative[c], K, replace=K > len(
            cls_negative[c])))) for i, c in zip(index.tolist(), y.tolist())]))

    draws = {"repd": (repdistiller, "subset")}
    g = torch.Generator().manual_seed(12)
    for name, via, neg in (("keys", "keys", "distinct"), ("stream", "stream", "distinct"), ("iid", None, "iid")):
        s = sampler(targets, K, via, negatives=neg)
        draws[name] = (lambda s=s: s.draw(y, index, g)), ("subset" if neg == "distinct" else "iid")
    for name, (draw, kind) in draws.items():
        losses = np.array([loss(draw()) for _ in range(R)])
        print(name, round(losses.mean(), 4), round(losses.std(ddof=1), 5), "exact", round(mean, 4),
              round(exact_std[kind], 5))
        assert abs(losses.mean() - mean) < 4 * exact_std[kind] / math.sqrt(R), name
        assert abs(losses.std(ddof=1) / exact_std[kind] - 1) < 0.1, name
