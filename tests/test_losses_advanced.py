"""AB, FT, FSP, CRD, SemCKD, SRRL and SimKD: each loss against its formula written out here on fixed
inputs, plus the behaviour each method promises (freezing, refusals, CRD's sampling and memory, SimKD's
classifier path). CPU only, offline, small tensors."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distiller_zoo.CRD as crd_mod
from crd.criterion import CRDLoss, nce_loss
from crd.memory import ClassNegativeSampler, ContrastMemory
from distiller_zoo import Batch, BuildContext, Outputs, build_distiller, get_distiller_class
from distiller_zoo.AB import ab_loss
from distiller_zoo.FSP import fsp_matrices
from distiller_zoo.FT import ft_loss
from distiller_zoo.SemCKD import semckd_loss
from helper.errors import ConfigError


# ---- fixtures: fake probes and models (no dependency on the zoo) -----------------------------------

class TinyNet(nn.Module):
    """Stands in for a zoo model: a body and a final nn.Linear classifier."""

    def __init__(self, c_in=4, width=6, num_classes=5):
        super().__init__()
        self.body = nn.Conv2d(c_in, width, 1)
        self.fc = nn.Linear(width, num_classes)

    def get_classifier(self):
        return self.fc


def make_opt(method, **over):
    parser = argparse.ArgumentParser()
    get_distiller_class(method).add_arguments(parser)
    opt = parser.parse_args([])
    base = dict(kd_T=4.0, feat_dim=8, nce_k=5, nce_t=0.07, nce_m=0.5, mode="exact", factor=2, soft=1.0,
                learning_rate=0.05, seed=3, model_s="resnet8x4")
    base.update(over)
    for k, v in base.items():
        setattr(opt, k, v)
    return opt


def probe(shapes, num_classes=5):
    """Outputs of a batch of 2 with feature maps of the given (C, H, W) / (C,) shapes."""
    feats = [torch.zeros(2, *s) for s in shapes]
    return Outputs(logits=torch.zeros(2, num_classes), feats=feats, preacts=feats)


def make_ctx(method, s_shapes, t_shapes, *, model_s=None, model_t=None, n_train=40, batch=8, targets=None,
             **opt_over):
    return BuildContext(opt=make_opt(method, **opt_over), s_probe=probe(s_shapes), t_probe=probe(t_shapes),
                        model_s=model_s or TinyNet(), model_t=model_t or TinyNet(), num_classes=5,
                        n_train=n_train, local_batch_size=batch, train_targets=targets)


def feats_from(shapes, b, gen, scale=1.0):
    return [torch.randn(b, *s, generator=gen) * scale for s in shapes]


def t_outputs(shapes, b, gen, num_classes=5):
    feats = feats_from(shapes, b, gen)
    return Outputs(logits=torch.randn(b, num_classes, generator=gen), feats=feats, preacts=feats)


def test_recommended_weights_are_the_published_ones():
    expected = {"abound": "-c 1 -d 0 -b 1", "factor": "-c 1 -d 0 -b 200", "fsp": "-c 1 -d 0 -b 50",
                "crd": "-c 1 -d 0 -b 0.8", "semckd": "-c 1 -d 1 -b 400", "srrl": "-c 1 -d 1 -b 1",
                "simkd": "-c 0 -d 0 -b 1"}
    for name, rec in expected.items():
        assert get_distiller_class(name).recommended == rec, name
    assert not get_distiller_class("abound").has_loss and not get_distiller_class("fsp").has_loss
    assert get_distiller_class("semckd").drop_last and get_distiller_class("simkd").logits_need_feats
    assert "preact" in get_distiller_class("abound").needs


# ---- AB ----------------------------------------------------------------------------------------------

def ab_reference(g_s, g_t, margin=1.0):
    """The margin loss written element by element."""
    n, total = len(g_s), 0.0
    for l, (s, t) in enumerate(zip(g_s, g_t)):
        layer = 0.0
        for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
            if sv > -margin and tv <= 0:
                layer += (sv + margin) ** 2
            if sv <= margin and tv > 0:
                layer += (sv - margin) ** 2
        total += 2.0 ** (l - n + 1) * layer / s.shape[0] * 3 / 1000
    return total


def test_ab_margin_loss_golden():
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 3), (3, 2, 2), (4, 1, 1)]
    g_s, g_t = feats_from(shapes, 3, gen, 1.5), feats_from(shapes, 3, gen)
    assert ab_loss(g_s, g_t).item() == pytest.approx(ab_reference(g_s, g_t), rel=1e-5)
    # hand-checked single values: s=0.5, t=-1 -> (1.5)^2; s=0.5, t=1 -> (0.5)^2; s=-2, t=-1 -> 0; s=2, t=1 -> 0
    s = torch.tensor([0.5, 0.5, -2.0, 2.0]).view(1, 4, 1, 1)
    t = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(1, 4, 1, 1)
    assert ab_loss([s], [t]).item() == pytest.approx((2.25 + 0.25) * 3 / 1000)


def test_ab_init_loss_uses_preact_stages_through_identity_connectors():
    shapes = [(3, 4, 4), (2, 4, 4), (3, 2, 2), (5,)]   # stem, 2 stages, pooled
    d = build_distiller("abound", make_ctx("abound", shapes, shapes))
    gen = torch.Generator().manual_seed(1)
    s, t = t_outputs(shapes, 4, gen), t_outputs(shapes, 4, gen)
    got = d.init_loss(s, t, Batch(images=torch.zeros(4), targets=torch.zeros(4)))
    assert got.item() == pytest.approx(ab_reference(s.feats[1:-1], t.feats[1:-1]), rel=1e-5)
    assert d(s, t, None).item() == 0.0 and sum(p.numel() for p in d.parameters()) == 0


def test_ab_connectors_train_in_init_then_freeze():
    s_shapes, t_shapes = [(3, 8, 8), (2, 8, 8), (4, 4, 4), (5,)], [(3, 8, 8), (6, 4, 4), (4, 4, 4), (6,)]
    model_s = TinyNet()
    d = build_distiller("abound", make_ctx("abound", s_shapes, t_shapes, model_s=model_s))
    conn = list(d.connector.parameters())
    assert conn, "a stage whose shape differs needs a trainable connector"
    init = d.init_parameters(model_s)
    ids = {id(p) for p in init}
    assert all(id(p) in ids for p in conn) and id(model_s.body.weight) in ids
    assert id(model_s.fc.weight) not in ids and id(model_s.fc.bias) not in ids
    gen = torch.Generator().manual_seed(2)
    s, t = t_outputs(s_shapes, 4, gen), t_outputs(t_shapes, 4, gen)
    d.train()
    d.init_loss(s, t, None).backward()
    assert all(p.grad is not None for p in conn)
    d.finish_init()
    assert all(not p.requires_grad for p in d.parameters())
    d.train()
    assert not d.connector.training and all(not m.training for m in d.connector.modules())
    # a checkpoint written after the init stage restores frozen connectors
    fresh = build_distiller("abound", make_ctx("abound", s_shapes, t_shapes))
    fresh.load_state_dict(d.state_dict())
    fresh.train()
    assert all(not p.requires_grad for p in fresh.parameters()) and not fresh.connector.training


def test_ab_refuses_unequal_stage_counts():
    with pytest.raises(ConfigError, match="stages"):
        build_distiller("abound", make_ctx("abound", [(3, 4, 4), (2, 4, 4), (5,)],
                                           [(3, 4, 4), (2, 4, 4), (2, 2, 2), (5,)]))


# ---- FT ----------------------------------------------------------------------------------------------

def ft_reference(a, b):
    """phi = l2norm(mean_c(x^2)), pooled to the smaller map first; mean absolute difference."""
    if a.shape[2] > b.shape[2]:
        a = F.avg_pool2d(a, a.shape[2] // b.shape[2])
    elif b.shape[2] > a.shape[2]:
        b = F.avg_pool2d(b, b.shape[2] // a.shape[2])
    out = 0.0
    n = 0
    for i in range(a.shape[0]):
        pa = (a[i] ** 2).mean(0).flatten()
        pb = (b[i] ** 2).mean(0).flatten()
        pa, pb = pa / pa.norm(), pb / pb.norm()
        out += (pa - pb).abs().sum().item()
        n += pa.numel()
    return out / n


def test_ft_factor_loss_golden():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 4, 4, 4, generator=gen), torch.randn(3, 2, 2, 2, generator=gen)
    assert ft_loss(a, b).item() == pytest.approx(ft_reference(a, b), rel=1e-5)
    assert ft_loss(b, a).item() == pytest.approx(ft_reference(b, a), rel=1e-5)
    # phi is scale-free per sample and ignores the channel order
    assert ft_loss(a, 3 * a.flip(1)).item() == pytest.approx(0.0, abs=1e-6)


def test_ft_init_and_main_stage():
    s_shapes, t_shapes = [(3, 8, 8), (4, 4, 4), (5,)], [(3, 8, 8), (6, 2, 2), (6,)]
    d = build_distiller("factor", make_ctx("factor", s_shapes, t_shapes))
    gen = torch.Generator().manual_seed(4)
    s, t = t_outputs(s_shapes, 3, gen), t_outputs(t_shapes, 3, gen)
    s.feats[-2].requires_grad_(True)
    assert {id(p) for p in d.init_parameters(TinyNet())} == {id(p) for p in d.paraphraser.parameters()}
    f_t = t.feats[-2]
    _, rec = d.paraphraser(f_t)
    assert d.init_loss(s, t, None).item() == pytest.approx(((rec - f_t) ** 2).mean().item(), rel=1e-6)
    d(s, t, None).backward()   # main-stage loss before finish_init: the teacher side takes no gradient
    assert all(p.grad is None for p in d.paraphraser.parameters())
    d.zero_grad(set_to_none=True)
    s.feats[-2].grad = None
    d.finish_init()
    d.train()
    assert not d.paraphraser.training and all(not p.requires_grad for p in d.paraphraser.parameters())
    loss = d(s, t, None)
    with torch.no_grad():
        expected = ft_reference(d.translator(s.feats[-2]), d.paraphraser.encode(f_t))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in d.translator.parameters()) and s.feats[-2].grad is not None
    assert all(p.grad is None for p in d.paraphraser.parameters())
    # RepDistiller's init lr: 0.01 for CIFAR resnet / wrn students only
    assert d.init_lr(make_opt("factor", model_s="wrn_16_2")) == 0.01
    assert d.init_lr(make_opt("factor", model_s="resnet8x4")) == 0.01
    assert d.init_lr(make_opt("factor", model_s="MobileNetV2", learning_rate=0.02)) == 0.02
    assert d.init_lr(make_opt("factor", model_s="ResNet50", learning_rate=0.05)) == 0.05


# ---- FSP ---------------------------------------------------------------------------------------------

def test_fsp_matrices_and_loss_golden():
    gen = torch.Generator().manual_seed(5)
    f0, f1, f2 = (torch.randn(2, 2, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen),
                  torch.randn(2, 3, 2, 2, generator=gen))
    g = fsp_matrices([f0, f1, f2])
    assert [tuple(m.shape) for m in g] == [(2, 3, 2), (2, 3, 3)]
    for b in range(2):
        for i in range(3):
            for j in range(2):   # G0[b, i, j] = mean_hw f1[b, i] * f0[b, j]
                assert g[0][b, i, j].item() == pytest.approx((f1[b, i] * f0[b, j]).mean().item(), abs=1e-6)
    f1p = F.avg_pool2d(f1, 2)    # the larger map is pooled to the smaller
    assert g[1][1, 2, 0].item() == pytest.approx((f2[1, 2] * f1p[1, 0]).mean().item(), abs=1e-6)
    shapes = [(2, 4, 4), (3, 4, 4), (3, 2, 2), (3,)]
    d = build_distiller("fsp", make_ctx("fsp", shapes, shapes))
    s, t = t_outputs(shapes, 2, gen), t_outputs(shapes, 2, gen)
    gs, gt = fsp_matrices(s.feats[:-1]), fsp_matrices(t.feats[:-1])
    want = sum(((a - b) ** 2).mean().item() for a, b in zip(gs, gt))
    assert d.init_loss(s, t, None).item() == pytest.approx(want, rel=1e-6)
    model_s = TinyNet()
    assert {id(p) for p in d.init_parameters(model_s)} == {id(p) for p in model_s.body.parameters()}


def test_fsp_refuses_unequal_channels():
    with pytest.raises(ConfigError, match="same channel count"):
        build_distiller("fsp", make_ctx("fsp", [(2, 4, 4), (3, 4, 4), (3,)], [(2, 4, 4), (6, 4, 4), (6,)]))


# ---- CRD ---------------------------------------------------------------------------------------------

def test_nce_loss_golden():
    out = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.05, 0.7]])
    n = 10
    c = 2 / n
    want = 0.0
    for row in out.tolist():
        want -= math.log(row[0] / (row[0] + c + 1e-7))
        want -= sum(math.log(c / (x + c + 1e-7)) for x in row[1:])
    assert nce_loss(out, n).item() == pytest.approx(want / 2, rel=1e-6)


def crd_reference(crit, f_s, f_t, idx, z=None):
    """CRD's loss written out: embed, score against the other view's bank, Z from this batch, NCE x 2."""
    def emb(head, f):
        v = f @ head.linear.weight.T + head.linear.bias
        return v / v.norm(dim=1, keepdim=True)
    v_s, v_t = emb(crit.embed_s, f_s), emb(crit.embed_t, f_t)
    mem = crit.memory
    n, T = mem.n_data, mem.T
    e_s = torch.stack([torch.exp(mem.memory_t[row] @ v / T) for row, v in zip(idx, v_s)])
    e_t = torch.stack([torch.exp(mem.memory_s[row] @ v / T) for row, v in zip(idx, v_t)])
    if z is None:
        z = (e_s.mean() * n, e_t.mean() * n)
    return nce_loss(e_s / z[0], n) + nce_loss(e_t / z[1], n), z


@pytest.mark.parametrize("scores", ["matmul", "gather"])
def test_crd_loss_golden_and_z_fixed_once(scores):
    torch.manual_seed(0)
    crit = CRDLoss(6, 7, 4, 12, 0.07, 0.5, scores)
    gen = torch.Generator().manual_seed(6)
    f_s, f_t = torch.randn(3, 6, generator=gen), torch.randn(3, 7, generator=gen)
    idx = torch.randint(0, 12, (3, 5), generator=gen)
    loss, _, _ = crit(f_s, f_t, idx)
    with torch.no_grad():
        want, z = crd_reference(crit, f_s, f_t, idx)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert crit.memory.Z.tolist() == pytest.approx([z[0].item(), z[1].item()], rel=1e-5)
    # a second batch keeps the first batch's Z
    f_s2, f_t2 = 3 * torch.randn(3, 6, generator=gen), torch.randn(3, 7, generator=gen)
    loss2, _, _ = crit(f_s2, f_t2, idx.flip(0))
    with torch.no_grad():
        want2, _ = crd_reference(crit, f_s2, f_t2, idx.flip(0), z)
    assert loss2.item() == pytest.approx(want2.item(), rel=1e-5)
    assert crit.memory.Z.tolist() == pytest.approx([z[0].item(), z[1].item()], rel=1e-5)


def test_crd_matmul_and_gather_scores_agree_with_gradients():
    torch.manual_seed(1)
    a = CRDLoss(6, 6, 4, 20, 0.07, 0.5, "matmul")
    b = CRDLoss(6, 6, 4, 20, 0.07, 0.5, "gather")
    b.load_state_dict(a.state_dict())
    gen = torch.Generator().manual_seed(7)
    f_s, f_t = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    idx = torch.randint(0, 20, (4, 9), generator=gen)
    la, _, _ = a(f_s, f_t, idx)
    lb, _, _ = b(f_s, f_t, idx)
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)
    assert a.memory.use_matmul(64, 16385) is True and b.memory.use_matmul(64, 16385) is False
    auto = ContrastMemory(128, 50000, scores="auto")
    assert auto.use_matmul(64, 16385)                 # CIFAR: the matmul moves fewer bytes
    assert not ContrastMemory(4, 20, scores="auto").use_matmul(1, 2)


def test_crd_memory_update_golden_and_unit_norm():
    torch.manual_seed(2)
    mem = ContrastMemory(3, 6, momentum=0.25)
    before_s, before_t = mem.memory_s.clone(), mem.memory_t.clone()
    index = torch.tensor([4, 1])
    v_s = F.normalize(torch.tensor([[1.0, 2.0, 2.0], [0.0, -3.0, 4.0]]), dim=1)
    v_t = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), dim=1)
    mem.update(index, v_s, v_t)
    for bank, before, v in ((mem.memory_s, before_s, v_s), (mem.memory_t, before_t, v_t)):
        for r, row in enumerate(index.tolist()):
            want = 0.25 * before[row] + 0.75 * v[r]
            torch.testing.assert_close(bank[row], want / want.norm())
        others = [i for i in range(6) if i not in index.tolist()]
        torch.testing.assert_close(bank[others], before[others])
        assert bank[index].norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # the initial rows are uniform in +-1/sqrt(d/3)
    big = ContrastMemory(12, 500)
    assert big.memory_s.abs().max().item() <= 1 / math.sqrt(12 / 3) + 1e-6


def class_targets(n_per=(5, 7, 3, 9)):
    return torch.cat([torch.full((k,), c) for c, k in enumerate(n_per)])[torch.randperm(sum(n_per),
                                                                            generator=torch.Generator().manual_seed(8))]


def test_crd_exact_negatives_avoid_the_anchor_class_and_cover_the_rest_uniformly():
    # K = 2000 exceeds every class's pool: RepDistiller's replace rule draws i.i.d. (tests/test_crd_negatives.py
    # has the K-subset draws)
    targets = class_targets()
    n = targets.numel()
    sampler = ClassNegativeSampler(targets, 2000, "exact")
    gen = torch.Generator().manual_seed(9)
    index = torch.arange(n)
    idx = sampler.draw(targets[index], index, gen)
    assert idx.shape == (n, 2001)
    assert torch.equal(idx[:, 0], index)
    for row, anchor in zip(idx, index):
        y = targets[anchor]
        assert not (targets[row[1:]] == y).any()
        counts = torch.bincount(row[1:], minlength=n).float()
        pool = targets != y
        assert (counts[~pool] == 0).all()
        expected = 2000 / pool.sum()
        # every other-class sample is drawn, about equally often (with replacement)
        assert counts[pool].min() > 0.6 * expected and counts[pool].max() < 1.4 * expected


def test_crd_relax_positive_shares_the_class():
    targets = class_targets()
    sampler = ClassNegativeSampler(targets, 16, "relax")
    index = torch.arange(targets.numel()).repeat(20)
    idx = sampler.draw(targets[index], index, torch.Generator().manual_seed(10))
    assert torch.equal(targets[idx[:, 0]], targets[index])
    assert not (idx[:, 0] == index).all()                       # not always the anchor itself
    assert not (targets[idx[:, 1:]] == targets[index].unsqueeze(1)).any()


def crd_setup(batch=8, n=24, **over):
    targets = torch.arange(n) % 4
    ctx = make_ctx("crd", [(3, 2, 2), (6,)], [(3, 2, 2), (5,)], n_train=n, batch=batch, targets=targets,
                   nce_k=7, **over)
    torch.manual_seed(11)
    return build_distiller("crd", ctx), targets


def test_crd_distiller_step_draws_updates_and_restores():
    d, targets = crd_setup()
    gen = torch.Generator().manual_seed(12)
    index = torch.tensor([3, 17, 8, 0, 22, 5, 11, 14])
    batch = Batch(images=torch.zeros(8), targets=targets[index], index=index)
    s = Outputs(logits=torch.zeros(8, 5), feats=[torch.zeros(8, 3, 2, 2), torch.randn(8, 6, generator=gen)])
    t = Outputs(logits=torch.zeros(8, 5), feats=[torch.zeros(8, 3, 2, 2), torch.randn(8, 5, generator=gen)])
    d.train()
    state0 = {k: v.clone() for k, v in d.state_dict().items() if torch.is_tensor(v)}
    # the step's negatives are the sampler's draw for (seed, draw 0); column 0 is the anchor
    expected_idx = d.sampler.draw(batch.targets, index, torch.Generator().manual_seed(crd_mod.draw_seed(3, 0)))
    loss = d(s, t, batch)
    with torch.no_grad():
        want, _ = crd_reference(d.criterion, s.feats[-1], t.feats[-1], expected_idx)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert d.draws == 1
    loss.backward()
    assert d.criterion.embed_s.linear.weight.grad is not None and d.criterion.embed_t.linear.weight.grad is not None
    with torch.no_grad():   # after the step: mem[y] <- l2norm(0.5 mem[y] + 0.5 v) for each view's own bank
        d.after_step(s, t, batch)
        for head, f, bank in ((d.criterion.embed_s, s.feats[-1], "memory_s"), (d.criterion.embed_t, t.feats[-1],
                                                                               "memory_t")):
            v = F.normalize(head.linear(f), dim=1)
            want_rows = F.normalize(0.5 * state0[f"criterion.memory.{bank}"][index] + 0.5 * v, dim=1)
            torch.testing.assert_close(getattr(d.criterion.memory, bank)[index], want_rows)
            assert getattr(d.criterion.memory, bank)[index].norm(dim=1).tolist() == pytest.approx([1.0] * 8,
                                                                                                  abs=1e-6)
    # state_dict carries banks, Z and the draw counter: a restored copy continues identically
    saved = d.state_dict()
    twin, _ = crd_setup()
    twin.load_state_dict(saved)
    assert twin.draws == 1 and torch.equal(twin.criterion.memory.Z, d.criterion.memory.Z)
    twin.train()
    torch.testing.assert_close(twin(s, t, batch), d(s, t, batch))
    # dataset-side indices are used as given
    given = expected_idx.flip(1)
    batch2 = Batch(images=torch.zeros(8), targets=batch.targets, index=index, contrast_idx=given)
    with torch.no_grad():
        want2, _ = crd_reference(d.criterion, s.feats[-1], t.feats[-1], given, tuple(d.criterion.memory.Z))
    assert d(s, t, batch2).item() == pytest.approx(want2.item(), rel=1e-5)


@pytest.mark.parametrize("negatives,via", [("distinct", "keys"), ("distinct", "stream"), ("iid", None)])
def test_crd_global_draw_equals_concatenated_rank_slices(monkeypatch, negatives, via):
    """2 ranks x batch 8 draw the rows that 1 process x batch 16 draws, and update the banks identically."""
    targets = torch.arange(48) % 4
    index = torch.randperm(48, generator=torch.Generator().manual_seed(13))[:16]
    y = targets[index]
    ref, _ = crd_setup(batch=16, n=48, crd_negatives=negatives)
    ref.sampler.via = via
    full = ref.contrast_indices(y, index)
    gen = torch.Generator().manual_seed(14)
    v_s, v_t = F.normalize(torch.randn(16, 8, generator=gen), dim=1), F.normalize(torch.randn(16, 8, generator=gen),
                                                                                    dim=1)
    ref._pending = [(index, v_s, v_t)]
    ref.after_step(None, None, None)

    parts = []
    for rank in range(2):
        sl = slice(8 * rank, 8 * rank + 8)
        d, _ = crd_setup(batch=8, n=48, crd_negatives=negatives)
        d.sampler.via = via
        monkeypatch.setattr(crd_mod, "world", lambda r=rank: (2, r))
        # all_gather in rank order: each rank hands in its own rows and gets the global batch back

        def fake_gather(x, sl=sl):
            if x.dim() == 2 and x.shape[1] == 2:                              # (targets, index)
                assert torch.equal(x, torch.stack([y[sl], index[sl]], 1))
                return torch.stack([y, index], 1)
            if x.dim() == 1:                                                  # indices for the bank update
                assert torch.equal(x, index[sl])
                return index
            assert torch.equal(x, torch.cat([v_s[sl], v_t[sl]], 1))         # embeddings
            return torch.cat([v_s, v_t], 1)
        monkeypatch.setattr(crd_mod, "all_gather_rows", fake_gather)
        parts.append(d.contrast_indices(y[sl], index[sl]))
        d._pending = [(index[sl], v_s[sl], v_t[sl])]
        d.after_step(None, None, None)
        for name in ("memory_s", "memory_t"):
            torch.testing.assert_close(getattr(d.criterion.memory, name), getattr(ref.criterion.memory, name))
    assert torch.equal(torch.cat(parts), full)


def test_crd_z_from_the_global_batch():
    torch.manual_seed(15)
    whole = ContrastMemory(4, 30)
    halves = [ContrastMemory(4, 30) for _ in range(2)]
    for h in halves:
        h.load_state_dict(whole.state_dict())
    gen = torch.Generator().manual_seed(16)
    v_s, v_t = F.normalize(torch.randn(6, 4, generator=gen), dim=1), F.normalize(torch.randn(6, 4, generator=gen), dim=1)
    idx = torch.randint(0, 30, (6, 5), generator=gen)
    whole(v_s, v_t, idx)
    # each "rank" all-reduces its (sum_s, sum_t, count) with the other's
    def stats(mem, sl):
        e_s = torch.exp(mem.similarities(v_s[sl], mem.memory_t, idx[sl]) / mem.T).double()
        e_t = torch.exp(mem.similarities(v_t[sl], mem.memory_s, idx[sl]) / mem.T).double()
        return torch.stack([e_s.sum(), e_t.sum(), torch.tensor(float(e_s.numel()), dtype=torch.float64)])
    for r, h in enumerate(halves):
        other = stats(h, slice(3 * (1 - r), 3 * (1 - r) + 3))
        h(v_s[3 * r:3 * r + 3], v_t[3 * r:3 * r + 3], idx[3 * r:3 * r + 3], all_reduce=lambda x: x.add_(other))
        torch.testing.assert_close(h.Z, whole.Z)


def test_crd_refusals():
    with pytest.raises(ConfigError, match="training labels"):
        build_distiller("crd", make_ctx("crd", [(6,)], [(5,)], targets=None))
    with pytest.raises(ConfigError, match="two classes"):
        build_distiller("crd", make_ctx("crd", [(6,)], [(5,)], n_train=5, targets=torch.zeros(5, dtype=torch.long)))
    d = build_distiller("crd", make_ctx("crd", [(6,)], [(5,)], targets=None, crd_sampler="dataset"))
    assert d.loader_options(d.opt) == {"contrast": True}
    with pytest.raises(RuntimeError, match="contrast_idx"):
        d(Outputs(torch.zeros(2, 5), [torch.zeros(2, 6)]), Outputs(torch.zeros(2, 5), [torch.zeros(2, 5)]),
          Batch(images=torch.zeros(2), targets=torch.zeros(2, dtype=torch.long), index=torch.tensor([0, 1])))


# ---- SemCKD ------------------------------------------------------------------------------------------

def test_semckd_weighted_sum_golden():
    gen = torch.Generator().manual_seed(17)
    b, s_len, t_len = 3, 2, 3
    proj = [[torch.randn(b, 2, 2, 2, generator=gen) for _ in range(t_len)] for _ in range(s_len)]
    tgt = [[torch.randn(b, 2, 2, 2, generator=gen) for _ in range(t_len)] for _ in range(s_len)]
    att = torch.softmax(torch.randn(b, s_len, t_len, generator=gen), -1)
    want = 0.0
    for bi in range(b):
        for i in range(s_len):
            for j in range(t_len):
                want += att[bi, i, j].item() * ((proj[i][j][bi] - tgt[i][j][bi]) ** 2).mean().item()
    assert semckd_loss(proj, tgt, att).item() == pytest.approx(want / (b * s_len), rel=1e-5)


def test_semckd_attention_and_forward():
    s_shapes, t_shapes = [(2, 8, 8), (3, 8, 8), (4, 4, 4), (4,)], [(2, 8, 8), (5, 4, 4), (6, 2, 2), (6,)]
    d = build_distiller("semckd", make_ctx("semckd", s_shapes, t_shapes, batch=8, soft=2.0))
    gen = torch.Generator().manual_seed(18)
    s, t = t_outputs(s_shapes, 8, gen), t_outputs(t_shapes, 8, gen)
    sa = d.self_attention
    with torch.no_grad():
        def mlp(m, f):   # Linear(B, B/2) ReLU Linear(B/2, B/4) l2norm on the rows of F F^T
            f = f.reshape(8, -1)
            h = torch.relu((f @ f.T) @ m.linear1.weight.T + m.linear1.bias) @ m.linear2.weight.T + m.linear2.bias
            return h / h.norm(dim=1, keepdim=True)
        q = [mlp(m, f) for m, f in zip(sa.query, s.feats[1:-1])]
        k = [mlp(m, f) for m, f in zip(sa.key, t.feats[1:-1])]
        att = torch.softmax(torch.stack([torch.stack([(qi * kj).sum(1) for kj in k], 1) for qi in q], 1) / 2.0, -1)
        assert tuple(sa.query[0].linear1.weight.shape) == (4, 8) and tuple(sa.query[0].linear2.weight.shape) == (2, 4)
        torch.testing.assert_close(sa.attention(s.feats[1:-1], t.feats[1:-1], 2.0), att)
    d.train()
    loss = d(s, t, None)
    # reference on the same regressors: student pooled where larger, teacher pooled where larger
    with torch.no_grad():
        proj, tgt = [], []
        for i, fs in enumerate(s.feats[1:-1]):
            proj.append([])
            tgt.append([])
            for j, ft in enumerate(t.feats[1:-1]):
                hs, ht = fs.shape[2], ft.shape[2]
                src = F.avg_pool2d(fs, hs // ht) if hs > ht else fs
                trg = F.avg_pool2d(ft, ht // hs) if ht > hs else ft
                proj[i].append(d.self_attention.regressors[i][j](src))
                tgt[i].append(trg)
                assert proj[i][j].shape == trg.shape
    # BN in train mode is deterministic given the batch, so recomputing gives the same maps
    assert loss.item() == pytest.approx(semckd_loss(proj, tgt, att).item(), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in d.parameters())
    with pytest.raises(RuntimeError, match="drop the last partial batch"):
        d(t_outputs(s_shapes, 6, gen), t_outputs(t_shapes, 6, gen), None)
    with pytest.raises(ConfigError, match="batch"):
        build_distiller("semckd", make_ctx("semckd", s_shapes, t_shapes, batch=2))


# ---- SRRL --------------------------------------------------------------------------------------------

def test_srrl_loss_golden_and_frozen_classifier():
    model_t = TinyNet(width=6, num_classes=5)
    d = build_distiller("srrl", make_ctx("srrl", [(3, 2, 2), (4,)], [(3, 2, 2), (6,)], model_t=model_t))
    assert d.cls_t is not model_t.fc and not any(p.requires_grad for p in d.cls_t.parameters())
    assert "cls_t.weight" in d.state_dict()
    gen = torch.Generator().manual_seed(19)
    f_s = torch.randn(5, 4, generator=gen, requires_grad=True)
    t = Outputs(logits=torch.randn(5, 5, generator=gen), feats=[torch.zeros(5, 3, 2, 2), torch.randn(5, 6, generator=gen)])
    d.train()
    loss = d(Outputs(logits=torch.zeros(5, 5), feats=[torch.zeros(5, 3, 2, 2), f_s]), t, None)
    with torch.no_grad():
        w = d.transfer.transfer[0].weight.view(6, 4)
        y = f_s @ w.T
        y = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5)    # BN, train mode, gamma 1 beta 0
        h = torch.relu(y)
        z = h @ model_t.fc.weight.T + model_t.fc.bias
        want = ((h - t.feats[-1]) ** 2).mean() + ((z - t.logits) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert f_s.grad is not None and d.transfer.transfer[0].weight.grad is not None
    assert d.cls_t.weight.grad is None and model_t.fc.weight.grad is None


# ---- SimKD -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s_hw,t_hw", [((4, 4), (2, 2)), ((2, 2), (4, 4)), ((2, 2), (2, 2))])
def test_simkd_loss_and_logits_path(s_hw, t_hw):
    model_t = TinyNet(width=6, num_classes=5)
    s_shapes, t_shapes = [(3, *s_hw), (4,)], [(6, *t_hw), (6,)]
    d = build_distiller("simkd", make_ctx("simkd", s_shapes, t_shapes, model_t=model_t, factor=2))
    assert d.cls_t is not model_t.fc and "cls_t.weight" in d.state_dict()
    assert not any(p.requires_grad for p in d.cls_t.parameters())
    w0, b0 = model_t.fc.weight.detach().clone(), model_t.fc.bias.detach().clone()
    with torch.no_grad():
        model_t.fc.weight.add_(1.0)   # the distiller holds a copy: later changes to the teacher do not leak in
    gen = torch.Generator().manual_seed(20)
    s = Outputs(logits=torch.zeros(4, 5), feats=[torch.randn(4, 3, *s_hw, generator=gen, requires_grad=True),
                                                  torch.zeros(4, 4)])
    t = Outputs(logits=torch.zeros(4, 5), feats=[torch.randn(4, 6, *t_hw, generator=gen), torch.zeros(4, 6)])
    d.train()
    logits = d.logits(s)
    loss = d(s, t, None)
    bn = d.projector.transfer[1]
    assert int(bn.num_batches_tracked) == 1          # one projector pass serves both logits and loss
    assert d._cache is None                          # ... and is not kept past the step
    with torch.no_grad():
        src = F.avg_pool2d(s.feats[0], s_hw[0] // t_hw[0]) if s_hw[0] > t_hw[0] else s.feats[0]
        trg = F.avg_pool2d(t.feats[0], t_hw[0] // s_hw[0]) if t_hw[0] > s_hw[0] else t.feats[0]
        # recompute the projection with the same batch statistics (train-mode BN is a function of the batch)
        p = d.projector(src)
        assert p.shape == trg.shape
        torch.testing.assert_close(loss, ((p - trg) ** 2).mean())
        torch.testing.assert_close(logits, p.mean((2, 3)) @ w0.T + b0)
    (loss + logits.sum()).backward()
    assert s.feats[0].grad is not None and d.projector.transfer[0].weight.grad is not None
    assert d.cls_t.weight.grad is None
    # validation: logits alone, from student features only, in eval mode
    d.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, *s_hw, generator=gen)
        pe = d.projector(src_of(x, s_hw, t_hw))
        torch.testing.assert_close(d.logits(Outputs(logits=torch.zeros(2, 5), feats=[x, torch.zeros(2, 4)])),
                                   pe.mean((2, 3)) @ w0.T + b0)
    # the classifier copy is restored from the distiller's state alone
    fresh = build_distiller("simkd", make_ctx("simkd", s_shapes, t_shapes, model_t=TinyNet(width=6)))
    fresh.load_state_dict(d.state_dict())
    torch.testing.assert_close(fresh.cls_t.weight, w0)


def src_of(x, s_hw, t_hw):
    return F.avg_pool2d(x, s_hw[0] // t_hw[0]) if s_hw[0] > t_hw[0] else x


def test_simkd_refuses_a_classifier_that_does_not_read_the_last_stage():
    with pytest.raises(ConfigError, match="classifier"):
        build_distiller("simkd", make_ctx("simkd", [(3, 2, 2), (4,)], [(7, 2, 2), (6,)], model_t=TinyNet(width=6)))
