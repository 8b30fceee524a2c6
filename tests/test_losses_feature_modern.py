"""ReviewKD, OFD and RCKA: each loss against its formula written out here, and against the numbers the
original code gives on the same inputs (fixtures below, with where they came from), plus each method's
shape derivation, options, defaults and refusals. CPU only, offline, small tensors.

The original code was not run from its repository (its dependencies are not here): its loss functions were
re-typed verbatim into scratch scripts outside this repository and run on the inputs that ``randn`` /
``fill_`` below make (same seeds, same weights), under torch 2.x on CPU.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_student
from distiller_zoo import BuildContext, Outputs, build_distiller, get_distiller_class
from distiller_zoo.OFD import ofd_margin, ofd_partial_l2
from distiller_zoo.RCKA import rcka_loss, relation_cka
from distiller_zoo.ReviewKD import ABF, hcl_loss
from helper.cka import linear_cka
from helper.errors import ConfigError
from models import model_dict

# ---- recorded outputs of the original code -----------------------------------------------------------------
# megvii-research/mdistiller @ a08d46f10d6102bd6e3f258ca5ac880b020ea259, mdistiller/distillers/ReviewKD.py
# (hcl_loss, ABF, forward_train's feature path; STU_PREACT False / True) on REVIEW_* below
MDISTILLER_REVIEWKD = {"post": 10.494335174560547, "pre": 10.511412620544434}
# the same commit, mdistiller/distillers/OFD.py (init_ofd_modules' margins with scipy.stats.norm, feat_loss,
# ConnectorConvBN, ofd_loss) on OFD_* below
MDISTILLER_OFD_MARGINS = [
    [-0.15000000596046448, -1.113309383392334, -0.9272986650466919, -0.19338259100914001, -0.38743287324905396],
    [-0.15000000596046448, -0.20656940340995789, -0.38602086901664734, -2.288829803466797, -0.08953338116407394,
     -0.2553294003009796, -0.10174424201250076]]
MDISTILLER_OFD_LOSS = 90.90763854980469
# Klayand/Distill_Knowledge (the RCKA authors' classification code) @ 5312bdf6d4d80db5fda7d322796bfc89390c75e2,
# distiller/CKA.py: cka_loss(teacher, student, with_l2_norm) = -CKA, on the (B, C) logits ("samples") and on
# their transposes ("classes"), for RCKA_LOGITS below
AUTHORS_RCKA = {True: {"samples": -0.3834126591682434, "classes": -0.49395015835762024},
                False: {"samples": -0.3700631856918335, "classes": -0.5555049777030945}}


def randn(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def fill_(module, seed):
    """Every parameter ~ 0.3 N(0, 1) in sorted-name order; BatchNorm weights shifted by +1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.add_(1.0)
    return module


def probe_of(shapes):
    feats = [torch.zeros(2, *s) for s in shapes]
    return Outputs(logits=torch.zeros(2, 5), feats=feats, preacts=feats)


def build(name, s_shapes, t_shapes, argv=(), model_t=None, batch=4, **over):
    parser = argparse.ArgumentParser()
    get_distiller_class(name).add_arguments(parser)
    opt = parser.parse_args(list(argv))
    opt.kd_mode = "offline"
    for k, v in over.items():
        setattr(opt, k, v)
    ctx = BuildContext(opt=opt, s_probe=probe_of(s_shapes), t_probe=probe_of(t_shapes), model_s=None,
                       model_t=model_t, num_classes=5, n_train=16, local_batch_size=batch)
    return build_distiller(name, ctx)


def real_probe(arch, needs):
    net = model_dict[arch](num_classes=100)
    return train_student.probe(net, needs, tuple(net.input_shape), "cpu"), net


# ================================================================================================ ReviewKD

def hcl_reference(fs, ft):
    """HCL written out in numpy: full-map MSE, then the 4/2/1 pyramid (levels below the height only)
    weighted 1/2, 1/4, 1/8, divided by the sum of the weights used; summed over the pairs."""
    total = 0.0
    for s, t in zip(fs, ft):
        s, t = s.double().numpy(), t.double().numpy()
        h = s.shape[2]
        terms, weights = [((s - t) ** 2).mean()], [1.0]
        for k, size in enumerate([v for v in (4, 2, 1) if v < h]):
            # adaptive average pooling of an H divisible by size: mean over equal blocks
            bs, bt = (x.reshape(*x.shape[:2], size, h // size, size, h // size).mean(axis=(3, 5)) for x in (s, t))
            terms.append(((bs - bt) ** 2).mean())
            weights.append(0.5 ** (k + 1))
        total += sum(w * v for w, v in zip(weights, terms)) / sum(weights)
    return total


def test_hcl_against_its_formula():
    shapes = [(3, 8, 8), (4, 4, 4), (5, 2, 2), (6, 1, 1)]   # pyramids of 3, 2, 1 and 0 levels
    fs = [randn((2,) + s, 1 + i) for i, s in enumerate(shapes)]
    ft = [randn((2,) + s, 11 + i, 2.0) for i, s in enumerate(shapes)]
    assert hcl_loss(fs, ft).item() == pytest.approx(hcl_reference(fs, ft), rel=1e-6)
    # a 1x1 map is a plain MSE; equal maps cost nothing
    assert hcl_loss(fs[-1:], ft[-1:]).item() == pytest.approx(((fs[-1] - ft[-1]) ** 2).mean().item(), rel=1e-6)
    assert hcl_loss(fs, fs).item() == 0.0


def _bn_eval(x, bn):
    return (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps) \
        * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def test_abf_fusion_against_its_formula():
    """1x1 conv + BN, sigmoid attention over [x, upsampled residual], nearest resize to the teacher size,
    3x3 conv + BN: written with functional ops and explicit nearest upsampling (repeat_interleave)."""
    abf = fill_(ABF(6, 4, 5, fuse=True), 7).eval()
    with torch.no_grad():
        for bn in (abf.conv1[1], abf.conv2[1]):
            bn.running_mean.copy_(randn(bn.running_mean.shape, 8))
            bn.running_var.copy_(randn(bn.running_var.shape, 9).abs() + 0.5)
    x, residual = randn((2, 6, 4, 4), 10), randn((2, 4, 2, 2), 11)
    out, fused = abf(x, residual, (8, 8))
    with torch.no_grad():
        a = _bn_eval(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1])
        r = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        att = torch.sigmoid(F.conv2d(torch.cat([a, r], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
        m = a * att[:, 0:1] + r * att[:, 1:2]
        m = m.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        expected = _bn_eval(F.conv2d(m, abf.conv2[0].weight, padding=1), abf.conv2[1])
    assert torch.allclose(fused, m, atol=1e-6) and torch.allclose(out, expected, atol=1e-5)
    # the deepest level has no attention and takes no residual
    assert ABF(6, 4, 5, fuse=False).att_conv is None


REVIEW_S = [(3, 8, 8), (6, 8, 8), (10, 4, 4), (12, 2, 2), (12,)]      # student: stem, 3 stages, pooled
REVIEW_T = [(3, 16, 16), (5, 16, 16), (7, 8, 8), (9, 4, 4), (9,)]     # teacher (larger maps: resized)


def review_inputs():
    s_feats = [randn((4,) + s, 10 + i) for i, s in enumerate(REVIEW_S)]
    s_pre = [randn((4,) + s, 20 + i) for i, s in enumerate(REVIEW_S)][:-1] + [s_feats[-1]]  # pooled is shared
    t_pre = [randn((4,) + s, 30 + i, 1.5) for i, s in enumerate(REVIEW_T)]
    return Outputs(logits=None, feats=s_feats, preacts=s_pre), Outputs(logits=None, feats=None, preacts=t_pre)


@pytest.mark.parametrize("preact", [False, True], ids=["post", "pre"])
def test_reviewkd_matches_mdistiller(preact):
    d = build("reviewkd", REVIEW_S, REVIEW_T, ["--reviewkd_preact"] if preact else [])
    for i, abf in enumerate(d.abfs):   # mdistiller's abfs in forward order (before its [::-1])
        fill_(abf, 100 + i)
    s, t = review_inputs()
    d.train()
    with torch.no_grad():
        got = d(s, t, None).item()
    assert got == pytest.approx(MDISTILLER_REVIEWKD["pre" if preact else "post"], rel=1e-5)


def test_reviewkd_reads_the_student_list_its_option_names_and_the_teacher_preacts():
    s, t = review_inputs()
    for preact, field in ((False, "feats"), (True, "preacts")):
        d = build("reviewkd", REVIEW_S, REVIEW_T, ["--reviewkd_preact"] if preact else []).train()
        base = d(s, t, None).item()
        other = "preacts" if field == "feats" else "feats"
        noisy = [f + randn(f.shape, 90) for f in getattr(s, other)]   # (a scale would vanish in the BNs)
        changed = Outputs(logits=None, **{field: getattr(s, field), other: noisy})
        assert d(changed, t, None).item() == pytest.approx(base, rel=1e-6)
        moved = Outputs(logits=None, **{other: getattr(s, other), field: [f + randn(f.shape, 91) for f in
                                                                          getattr(s, field)]})
        assert d(moved, t, None).item() != pytest.approx(base, rel=1e-3)
    t_post = Outputs(logits=None, feats=[f * 3 for f in t.preacts], preacts=t.preacts)
    assert d(s, t_post, None).item() == pytest.approx(d(s, t, None).item(), rel=1e-6)


@pytest.mark.parametrize("student,teacher,expected", [
    # mdistiller's CIFAR config (cfg.py REVIEWKD) for resnet32x4 -> resnet8x4
    ("resnet8x4", "resnet32x4", dict(in_channels=[64, 128, 256, 256], out_channels=[64, 128, 256, 256],
                                     shapes=[1, 8, 16, 32], out_shapes=[1, 8, 16, 32])),
    # the authors' build_review_kd (dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py): wrn, shufflev2, vgg
    ("wrn_16_2", "wrn_40_2", dict(in_channels=[32, 64, 128, 128], out_channels=[32, 64, 128, 128],
                                  shapes=[1, 8, 16, 32], out_shapes=[1, 8, 16, 32])),
    ("ShuffleV2", "resnet32x4", dict(in_channels=[116, 232, 464, 1024], out_channels=[64, 128, 256, 256],
                                     shapes=[1, 4, 8, 16], out_shapes=[1, 8, 16, 32])),
    ("vgg8", "vgg13", dict(in_channels=[128, 256, 512, 512, 512], out_channels=[128, 256, 512, 512, 512],
                           shapes=[1, 4, 4, 8, 16], out_shapes=[1, 4, 4, 8, 16])),
])
def test_reviewkd_derives_the_published_per_pair_tables(student, teacher, expected):
    needs = get_distiller_class("reviewkd").needs
    (s_probe, _), (t_probe, _) = real_probe(student, needs), real_probe(teacher, needs)
    d = build_distiller("reviewkd", BuildContext(opt=argparse.Namespace(), s_probe=s_probe, t_probe=t_probe,
                                                 model_s=None, model_t=None, num_classes=100, n_train=8,
                                                 local_batch_size=4))
    assert {k: d.plan[k] for k in expected} == expected
    assert d.abfs[0].conv1[0].out_channels == min(512, expected["in_channels"][-1])


def test_reviewkd_pairs_lists_of_unequal_length_from_the_deepest_end():
    """A student with one stage more than the teacher: its shallowest stage is left out (mdistiller's and the
    authors' per-pair tables pair the pooled vectors, then the last stages, ...)."""
    s_shapes = [(3, 16, 16), (4, 16, 16)] + REVIEW_S[1:]
    d = build("reviewkd", s_shapes, REVIEW_T)
    assert d.plan["in_channels"] == [6, 10, 12, 12] and d.plan["out_channels"] == [5, 7, 9, 9]
    s, t = review_inputs()
    extra = Outputs(logits=None, feats=s.feats[:1] + [randn((4, 4, 16, 16), 5)] + s.feats[1:], preacts=None)
    ref = build("reviewkd", REVIEW_S, REVIEW_T)
    ref.load_state_dict(d.state_dict())
    d.train(), ref.train()
    assert d(extra, t, None).item() == pytest.approx(ref(s, t, None).item(), rel=1e-6)


def test_reviewkd_defaults_weights_and_refusals():
    cls = get_distiller_class("reviewkd")
    assert cls.recommended == "-c 1 -d 0 -b 5" and cls.defaults == {"beta_warmup": 20}
    assert "preact" in cls.needs   # the teacher side is always pre-activation
    base = ["--distill", "reviewkd", "--path_t", "t.pth", "--model_s", "resnet8"]
    assert train_student.parse_option(base).beta_warmup == 20
    assert train_student.parse_option(base + ["--beta_warmup", "1"]).beta_warmup == 1
    with pytest.raises(ConfigError, match="reviewkd needs"):
        build("reviewkd", [(3, 4, 4), (5,)], [(3, 4, 4), (5,)])            # no stage map, only the pooled vector
    with pytest.raises(ConfigError, match="reviewkd needs"):
        build("reviewkd", [(3, 4, 4), (7,), (5,)], REVIEW_T)               # a vector where a map belongs


# ================================================================================================ OFD

def margin_by_integration(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, gamma^2), by numerical integration (no closed form)."""
    sd = abs(gamma)
    x = np.linspace(beta - 12 * sd, 0.0, 400_001)
    p = np.exp(-0.5 * ((x - beta) / sd) ** 2)
    return float(np.trapezoid(x * p, x) / np.trapezoid(p, x))


@pytest.mark.parametrize("gamma,beta", [(1.0, 0.0), (0.5, -1.0), (-2.0, 0.7), (0.3, 0.6), (1.5, -4.0)])
def test_ofd_margin_is_the_mean_of_the_negative_part(gamma, beta):
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():
        bn.weight.fill_(gamma)
        bn.bias.fill_(beta)
    assert ofd_margin(bn).item() == pytest.approx(margin_by_integration(gamma, beta), rel=1e-4)


def test_ofd_margin_far_tail_and_constant_channels():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, 0.0, 0.0, 0.0]))
        bn.bias.copy_(torch.tensor([1.0, 0.5, -0.5, 0.0]))   # Phi(-10) <= 0.001: -3 * std; gamma 0: min(beta, 0)
    assert ofd_margin(bn).tolist() == pytest.approx([-0.3, 0.0, -0.5, 0.0], abs=1e-7)


def partial_l2_reference(s, t, m):
    """The three cases of OFD's partial L2, element by element, summed over (C, H, W), mean over the batch."""
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            mc = float(m.flatten()[c])
            for sv, tv in zip(s[b, c].flatten().tolist(), t[b, c].flatten().tolist()):
                if tv > 0:
                    total += (sv - tv) ** 2
                elif tv <= mc:
                    total += (sv - mc) ** 2 if sv > mc else 0.0
                elif sv > tv:
                    total += (sv - tv) ** 2
    return total / s.shape[0]


def test_ofd_partial_l2_against_its_cases():
    s, t = randn((3, 4, 3, 3), 1, 1.5), randn((3, 4, 3, 3), 2, 1.5)
    m = -randn((1, 4, 1, 1), 3).abs()
    assert ofd_partial_l2(s, t, m).item() == pytest.approx(partial_l2_reference(s, t, m), rel=1e-6)
    # hand-checked: m = -1; (s, t) = (0.5, -2) -> (1.5)^2; (-1.5, -2) -> 0; (-0.2, -0.5) -> (0.3)^2;
    # (-0.7, -0.5) -> 0; (-1, 2) -> 9
    s1 = torch.tensor([0.5, -1.5, -0.2, -0.7, -1.0]).view(1, 1, 1, 5)
    t1 = torch.tensor([-2.0, -2.0, -0.5, -0.5, 2.0]).view(1, 1, 1, 5)
    assert ofd_partial_l2(s1, t1, torch.full((1, 1, 1, 1), -1.0)).item() == pytest.approx(2.25 + 0.09 + 9.0)


OFD_S = [(3, 8, 8), (4, 4, 4), (6, 2, 2), (6,)]       # student preacts: stem, 2 stages, pooled
OFD_T = [(3, 16, 16), (5, 8, 8), (7, 4, 4), (7,)]     # teacher: larger maps, pooled to the student's


class BNTeacher(nn.Module):
    """Only what OFD reads of a teacher: its BatchNorms before ReLU."""

    def __init__(self):
        super().__init__()
        self.bns = nn.ModuleList()
        for i, c in enumerate((5, 7)):
            bn = nn.BatchNorm2d(c)
            with torch.no_grad():
                bn.weight.copy_(randn((c,), 60 + i, 0.8))
                bn.bias.copy_(randn((c,), 70 + i))
                bn.weight[0], bn.bias[0] = 0.05, 1.0     # far tail: -3 * std
            self.bns.append(bn)

    def get_bn_before_relu(self):
        return list(self.bns)


def test_ofd_matches_mdistiller():
    d = build("ofd", OFD_S, OFD_T, model_t=BNTeacher())
    assert [m.flatten().tolist() for m in d.margins()] == \
        [pytest.approx(v, rel=1e-6) for v in MDISTILLER_OFD_MARGINS]
    for i, conn in enumerate(d.connectors):
        fill_(conn, 200 + i)
    s = Outputs(logits=None, preacts=[randn((3,) + x, 40 + i) for i, x in enumerate(OFD_S)])
    t = Outputs(logits=None, preacts=[randn((3,) + x, 50 + i, 1.5) for i, x in enumerate(OFD_T)])
    d.train()
    with torch.no_grad():
        assert d(s, t, None).item() == pytest.approx(MDISTILLER_OFD_LOSS, rel=1e-5)
    # the margins travel in the checkpoint (buffers), the stage weights halve towards the input
    assert {"margin0", "margin1"} <= set(d.state_dict())
    d.eval()
    with torch.no_grad():
        per = [ofd_partial_l2(conn(f), F.adaptive_avg_pool2d(g, f.shape[-2:]), m)
               for conn, f, g, m in zip(d.connectors, s.preacts[1:-1], t.preacts[1:-1], d.margins())]
        assert d(s, t, None).item() == pytest.approx((per[0] / 2 + per[1]).item(), rel=1e-6)


def _small_nets():
    """ResNet18/34/50's (CIFAR and ImageNet) code paths at one block per stage: the same get_bn_before_relu
    and forward, a fraction of the construction and forward time."""
    from models import resnet_imagenet as rin, resnetv2 as rv2
    return {f"{family.__name__}({block.__name__})": (family(block, [1, 1, 1, 1], num_classes=10), side)
            for family, blocks, side in ((rv2.ResNet, (rv2.BasicBlock, rv2.Bottleneck), 32),
                                         (rin.ResNetImageNet, (rin.BasicBlock, rin.Bottleneck), 64))
            for block in blocks}


BN_MODELS = ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ResNet(BasicBlock)", "ResNet(Bottleneck)",
             "ResNetImageNet(BasicBlock)", "ResNetImageNet(Bottleneck)"]


@pytest.mark.parametrize("arch", BN_MODELS)
def test_each_bn_before_relu_makes_its_stage_preact(arch):
    """Shifting channel c of stage k's listed BatchNorm by delta shifts the stage's pre-activation feature
    (BN output, plus the shortcut where there is one) by exactly delta in channel c and nowhere else, and
    leaves the earlier stages alone: that BN's output is an additive part of that feature."""
    torch.manual_seed(0)
    if arch in model_dict:
        net = model_dict[arch](num_classes=10)
        side = net.input_shape[-1]
    else:
        net, side = _small_nets()[arch]   # an ImageNet net accepts 64 x 64 as well as 224 x 224
    net.eval()
    x = torch.randn(2, net.input_shape[0], side, side)
    bns = net.get_bn_before_relu()
    with torch.no_grad():
        (_, base), _ = net(x, is_feat=True, preact="both")
        stages = base[1:-1]
        assert len(bns) == len(stages) and all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
        assert [bn.num_features for bn in bns] == [f.shape[1] for f in stages]
        for k, bn in enumerate(bns):
            c = bn.num_features // 2
            bn.bias[c] += 0.5
            (_, moved), _ = net(x, is_feat=True, preact="both")
            bn.bias[c] -= 0.5
            diff = moved[1 + k] - stages[k]
            assert torch.allclose(diff[:, c], torch.full_like(diff[:, c], 0.5), atol=1e-4), (arch, k)
            assert torch.allclose(torch.cat([diff[:, :c], diff[:, c + 1:]], 1), torch.zeros(()), atol=1e-5)
            assert all(torch.equal(a, b) for a, b in zip(moved[1:1 + k], stages[:k]))


@pytest.mark.parametrize("arch", ["ShuffleV1", "ShuffleV2", "cnn_mnist_teacher", "VGGCifar9"])
def test_ofd_refuses_teachers_without_a_bn_before_relu(arch):
    with pytest.raises(ConfigError, match="ofd needs the BatchNorm") as e:
        build("ofd", OFD_S, OFD_T, model_t=model_dict[arch](num_classes=10))
    assert "\n" not in str(e.value)


def test_ofd_on_a_real_teacher_weights_and_refusals():
    needs = get_distiller_class("ofd").needs
    (s_probe, _), (t_probe, net_t) = real_probe("resnet8", needs), real_probe("resnet14", needs)
    with torch.no_grad():
        for bn in net_t.get_bn_before_relu():
            bn.weight.uniform_(0.2, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    ctx = dict(s_probe=s_probe, t_probe=t_probe, model_s=None, model_t=net_t, num_classes=100, n_train=8,
               local_batch_size=4)
    d = build_distiller("ofd", BuildContext(opt=argparse.Namespace(kd_mode="offline"), **ctx))
    for m, bn in zip(d.margins(), net_t.get_bn_before_relu()):
        assert torch.equal(m.flatten(), ofd_margin(bn)) and (m < 0).all()
    assert get_distiller_class("ofd").recommended == "-c 1 -d 0 -b 0.001"
    assert get_distiller_class("ofd").defaults == {}   # mdistiller's OFD has no warm-up
    for mode in ("self", "online"):
        with pytest.raises(ConfigError, match="--kd_mode offline"):
            build_distiller("ofd", BuildContext(opt=argparse.Namespace(kd_mode=mode), **ctx))


# ================================================================================================ RCKA

def relation_cka_reference(x, y, row_norm):
    """numpy: Grams K = X X^T, L = Y Y^T (no centring); optionally row i / sqrt(K_ii);
    tr(K L^T) / sqrt(tr(K K^T) tr(L L^T))."""
    x, y = x.double().numpy(), y.double().numpy()
    k, l = x @ x.T, y @ y.T
    if row_norm:
        k, l = k / np.sqrt(np.diag(k))[:, None], l / np.sqrt(np.diag(l))[:, None]
    return float(np.trace(k @ l.T) / np.sqrt(np.trace(k @ k.T) * np.trace(l @ l.T)))


RCKA_LOGITS = lambda: (randn((8, 5), 300, 3.0), randn((8, 5), 301, 3.0))   # noqa: E731  (student, teacher)


@pytest.mark.parametrize("row_norm", [True, False])
def test_relation_cka_against_its_formula_and_the_authors_code(row_norm):
    z_s, z_t = RCKA_LOGITS()
    samples, classes = relation_cka(z_t, z_s, row_norm).item(), relation_cka(z_t.T, z_s.T, row_norm).item()
    assert samples == pytest.approx(relation_cka_reference(z_t, z_s, row_norm), rel=1e-6)
    assert classes == pytest.approx(relation_cka_reference(z_t.T, z_s.T, row_norm), rel=1e-6)
    assert -samples == pytest.approx(AUTHORS_RCKA[row_norm]["samples"], rel=1e-6)
    assert -classes == pytest.approx(AUTHORS_RCKA[row_norm]["classes"], rel=1e-6)
    # the loss: 1 - CKA per term (the authors minimise -CKA: same gradient), the class term weighted
    assert rcka_loss(z_s, z_t, 0.5, row_norm).item() == pytest.approx((1 - samples) + 0.5 * (1 - classes), rel=1e-6)
    assert rcka_loss(z_s, z_t, 0.0, row_norm).item() == pytest.approx(1 - samples, rel=1e-6)


def test_relation_cka_is_uncentred_linear_cka():
    """Without the row normalisation, on column-centred inputs, it is the project's biased linear CKA
    (helper/cka.py); on raw logits it is not (RCKA does not centre)."""
    z_s, z_t = RCKA_LOGITS()
    z_s, z_t = z_s + 2.0, z_t - 1.0
    cs, ct = z_s - z_s.mean(0), z_t - z_t.mean(0)
    assert relation_cka(ct, cs, row_norm=False).item() == pytest.approx(linear_cka(ct, cs).item(), rel=1e-5)
    assert relation_cka(z_t, z_s, row_norm=False).item() != pytest.approx(linear_cka(z_t, z_s).item(), rel=1e-2)


def test_rcka_distiller_reads_logits_is_scale_free_and_refuses_a_negative_weight():
    z_s, z_t = RCKA_LOGITS()
    d = build("rcka", [(5,)], [(5,)], ["--rcka_class_weight", "0.5"])
    s, t = Outputs(logits=z_s.clone().requires_grad_(True)), Outputs(logits=z_t)
    loss = d(s, t, None)
    assert loss.item() == pytest.approx(rcka_loss(z_s, z_t, 0.5).item(), rel=1e-6)
    loss.backward()
    assert s.logits.grad is not None and s.logits.grad.abs().sum() > 0
    # CKA is invariant to an isotropic scale: a student that is 3x the teacher is perfectly aligned
    assert d(Outputs(logits=3 * z_t), t, None).item() == pytest.approx(0.0, abs=1e-6)
    assert build("rcka", [(5,)], [(5,)], ["--rcka_no_row_norm"])(s, t, None).item() == \
        pytest.approx(rcka_loss(z_s, z_t, 1.0, row_norm=False).item(), rel=1e-6)
    assert get_distiller_class("rcka").recommended == "-c 1 -d 0 -b 15"
    with pytest.raises(ConfigError, match="--rcka_class_weight -1.0"):
        build("rcka", [(5,)], [(5,)], ["--rcka_class_weight", "-1"])


# ================================================================================================ all three

@pytest.mark.parametrize("name", ["reviewkd", "ofd", "rcka"])
def test_bf16_inputs_give_a_float32_loss(name):
    if name == "reviewkd":
        d, (s, t) = build("reviewkd", REVIEW_S, REVIEW_T), review_inputs()
    elif name == "ofd":
        d = build("ofd", OFD_S, OFD_T, model_t=BNTeacher())
        s = Outputs(logits=None, preacts=[randn((3,) + x, 40 + i) for i, x in enumerate(OFD_S)])
        t = Outputs(logits=None, preacts=[randn((3,) + x, 50 + i) for i, x in enumerate(OFD_T)])
    else:
        d = build("rcka", [(5,)], [(5,)])
        z_s, z_t = RCKA_LOGITS()
        s, t = Outputs(logits=z_s), Outputs(logits=z_t)
    d.eval()

    def cast(o, dtype):
        f = (lambda xs: [x.to(dtype) for x in xs] if xs is not None else None)
        return Outputs(logits=o.logits.to(dtype) if o.logits is not None else None, feats=f(o.feats),
                       preacts=f(o.preacts))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        value = d(cast(s, torch.bfloat16), cast(t, torch.bfloat16), None)
    assert value.dtype == torch.float32
    with torch.no_grad():
        ref = d(cast(s, torch.float32), cast(t, torch.float32), None).item()
    assert value.item() == pytest.approx(ref, rel=0.05)
