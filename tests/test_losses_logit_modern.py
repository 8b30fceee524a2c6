"""The 2022-2024 logit methods (dkd, dist, mlkd, ctkd), logit standardisation (--logit_stand) and DOT
(--optimizer dot), each checked twice on fixed inputs:

1. against the formula written again here, independently (numpy, float64, explicit loops);
2. against the numbers the original code gives on the same inputs: tests/data/modern_logit_reference.json,
   whose ``sources`` name the repository, commit and file of each original function (re-typed verbatim in a
   scratch script and run there; none of that code is part of this repository).

Plus the behaviour each method promises: the loop's weight mapping, defaults taken from the method's own
codebase, refusals (one ConfigError line), gradients to the student and the method's own parameters.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import train_student
from distiller_zoo import Batch, BuildContext, Outputs, build_distiller
from distiller_zoo.CTKD import curriculum_lambda
from distiller_zoo.DIST import dist_loss
from distiller_zoo.DKD import dkd_loss
from distiller_zoo.KD import kd_loss, standardize
from distiller_zoo.MLKD import confidence_masks, mlkd_loss
from helper.errors import ConfigError
from helper.loops import DistillStudent
from helper.optim import DOT

REF = json.load(open(os.path.join(os.path.dirname(__file__), "data", "modern_logit_reference.json")))
CASES = sorted(REF["cases"])


def case(name):
    c = REF["cases"][name]
    f = lambda k: torch.tensor(c[k], dtype=torch.float32)  # noqa: E731
    return f("s"), f("t"), f("s_strong"), f("t_strong"), torch.tensor(c["targets"])


def np_case(name):
    c = REF["cases"][name]
    return (np.array(c["s"], dtype=np.float64), np.array(c["t"], dtype=np.float64),
            np.array(c["s_strong"], dtype=np.float64), np.array(c["t_strong"], dtype=np.float64),
            np.array(c["targets"]))


# ---- independent formulas (numpy, float64) ---------------------------------------------------------------

def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p, q):
    """KL(p || q) of each row."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def np_kd(s, t, T):
    return np_kl(np_softmax(t / T), np_softmax(s / T)).mean() * T * T


def np_stand(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def np_dkd(s, t, y, alpha, beta, T):
    """TCKD on the binary (target, rest) split; NCKD on the softmax over the other classes only."""
    p_s, p_t = np_softmax(s / T), np_softmax(t / T)
    tckd = nckd = 0.0
    for i, c in enumerate(y):
        b_s = np.array([p_s[i, c], 1 - p_s[i, c]])
        b_t = np.array([p_t[i, c], 1 - p_t[i, c]])
        tckd += (b_t * np.log(b_t / b_s)).sum()
        others = [k for k in range(s.shape[1]) if k != c]
        q_s, q_t = np_softmax(s[i:i + 1, others] / T)[0], np_softmax(t[i:i + 1, others] / T)[0]
        nckd += (q_t * np.log(q_t / q_s)).sum()
    n = len(y)
    return T * T * (alpha * tckd + beta * nckd) / n


def np_dist(s, t, tau, beta, gamma):
    y_s, y_t = np_softmax(s / tau), np_softmax(t / tau)
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(len(s))])
    intra = 1 - np.mean([np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(s.shape[1])])
    return tau * tau * (beta * inter + gamma * intra)


def np_mlkd(s, t, ss=None, ts=None, T=4.0, stand=False):
    """MLKD's official sum with its quirks spelled out: scalar terms scaled by the masks' kept fractions;
    the 'strong' sum takes the weak logits at tau 2 and 6; no strong-view class/batch terms."""
    p_tw = np_softmax(t)
    conf, class_conf = p_tw.max(axis=1), p_tw.sum(axis=0)
    m = float(np.mean(conf <= np.percentile(conf, 50)))
    m_c = float(np.mean(class_conf <= np.percentile(class_conf, 50)))
    kd = (lambda a, b, tau: np_kd(np_stand(a), np_stand(b), tau)) if stand else np_kd
    total = 0.0
    for tau in (T, 3.0, 5.0, 2.0, 6.0):
        ps, pt = np_softmax(s / tau), np_softmax(t / tau)
        bc = ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]
        cc = ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]
        total += kd(s, t, tau) * m + bc * m + cc * m_c
    if ss is not None:
        total += sum(kd(ss, ts, tau) for tau in (T, 3.0, 5.0)) + kd(s, t, 2.0) + kd(s, t, 6.0)
    return total


# ---- building a method from fake probes -------------------------------------------------------------------

def make_opt(name, *argv, **over):
    """The options train_student.py would parse (with the method's defaults applied), then ``over``."""
    opt = train_student.parse_option(["--distill", name, "--path_t", "t.pth", *argv])
    opt.rank, opt.world_size, opt.distributed = 0, 1, False
    for k, v in over.items():
        setattr(opt, k, v)
    return opt


def build(name, *argv, batch=6, classes=5, **over):
    probe = Outputs(logits=torch.zeros(2, classes))
    ctx = BuildContext(opt=make_opt(name, *argv, **over), s_probe=probe, t_probe=probe, model_s=nn.Identity(),
                       model_t=nn.Identity(), num_classes=classes, n_train=100, local_batch_size=batch)
    return build_distiller(name, ctx)


def outputs(logits, strong=None, grad=False):
    logits = logits.clone().requires_grad_(grad)
    return Outputs(logits=logits, strong=Outputs(logits=strong.clone().requires_grad_(grad)) if strong is not None
                   else None)


def loop_losses(d, s, t, targets, epoch=1):
    """The loop's loss terms for hand-made outputs (DistillStudent.losses, in ``epoch``)."""
    inner = DistillStudent(nn.Identity(), d, d.opt)
    inner.set_epoch(epoch)
    return inner.losses(s, Batch(images=torch.zeros(len(targets), 1), targets=targets), t)


def test_recommended_settings_are_the_published_ones():
    expected = {"dkd": "-c 1 -d 0 -b 1 --dkd_beta 8", "dist": "-c 1 -d 0 -b 2", "mlkd": "-c 0.1 -d 0 -b 0.9",
                "ctkd": "-c 0.1 -d 0.9"}
    for name, rec in expected.items():
        cls = type(build(name))
        assert cls.recommended == rec, name
        make_opt(name, *rec.split())   # every flag of it parses
    assert type(build("dkd")).defaults == {"beta_warmup": 20}
    assert type(build("mlkd")).defaults == {"strong_aug": "randaugment"}
    assert not type(build("ctkd")).has_loss and type(build("dist")).has_loss


# ---- DKD ---------------------------------------------------------------------------------------------------

DKD_SETTINGS = {"a1_b8_T4": (1.0, 8.0, 4.0), "a1_b0.5_T1": (1.0, 0.5, 1.0), "a0_b1_T4": (0.0, 1.0, 4.0),
                "a1_b0_T4": (1.0, 0.0, 4.0)}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("setting", sorted(DKD_SETTINGS))
def test_dkd_matches_formula_and_mdistiller(name, setting):
    s, t, _, _, y = case(name)
    alpha, beta, T = DKD_SETTINGS[setting]
    got = dkd_loss(s, t, y, alpha, beta, T).item()
    assert got == pytest.approx(REF["dkd"][name][setting], rel=1e-5)
    assert got == pytest.approx(np_dkd(*np_case(name)[:2], np_case(name)[4], alpha, beta, T), rel=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_dkd_with_logit_standardisation_matches_the_ls_repository(name):
    s, t, _, _, y = case(name)
    got = dkd_loss(s, t, y, 1.0, 8.0, 2.0, stand=True).item()
    assert got == pytest.approx(REF["dkd"][name]["ls_a1_b8_T2"], rel=1e-5)
    s64, t64, _, _, y64 = np_case(name)
    assert got == pytest.approx(np_dkd(np_stand(s64), np_stand(t64), y64, 1.0, 8.0, 2.0), rel=1e-5)


def test_dkd_decomposes_kd_per_sample():
    """DKD's identity (its eq. 5): KD = TCKD + (1 - p_t[gt]) * NCKD, sample by sample."""
    s, t, _, _, y = case("b6c5")
    T = 4.0
    for i in range(len(y)):
        si, ti, yi = s[i:i + 1], t[i:i + 1], y[i:i + 1]
        tckd, nckd = dkd_loss(si, ti, yi, 1.0, 0.0, T), dkd_loss(si, ti, yi, 0.0, 1.0, T)
        p_gt = torch.softmax(ti / T, dim=1)[0, yi[0]]
        assert kd_loss(si, ti, T).item() == pytest.approx((tckd + (1 - p_gt) * nckd).item(), rel=1e-5)


def test_dkd_method_defaults_views_gradient_and_refusals():
    opt = make_opt("dkd")
    assert (opt.beta_warmup, opt.dkd_alpha, opt.dkd_beta, opt.kd_T) == (20, 1.0, 8.0, 4.0)
    assert opt.method_defaults == ["beta_warmup"]
    assert make_opt("dkd", "--beta_warmup", "0").beta_warmup == 0   # the user's value wins
    s, t, ss, ts, y = case("b6c5")
    d = build("dkd", "-c", "1", "-d", "0", "-b", "1")
    s_out = outputs(s, ss, grad=True)
    loss = d(s_out, outputs(t, ts), Batch(images=torch.zeros(6), targets=y))
    expected = REF["dkd"]["b6c5"]["a1_b8_T4"] + dkd_loss(ss, ts, y, 1.0, 8.0, 4.0).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)   # summed over both views
    loss.backward()
    assert s_out.logits.grad.abs().sum() > 0 and s_out.strong.logits.grad.abs().sum() > 0
    # the loop ramps -b by min(epoch / 20, 1) and the LS flag reaches the method
    inner = DistillStudent(nn.Identity(), d, d.opt)
    inner.set_epoch(5)
    assert inner.weights[2] == pytest.approx(5 / 20)
    assert build("dkd", "--logit_stand").stand
    with pytest.raises(ConfigError, match="mixup"):
        build("dkd", mixup=0.2)
    with pytest.raises(ConfigError, match="kd_T"):
        build("dkd", "--kd_T", "0")


# ---- DIST --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("key,tau,beta,gamma", [("sota_tau1", 1.0, 1.0, 1.0), ("tau4", 4.0, 1.0, 1.0),
                                                ("tau4_beta2_gamma0.5", 4.0, 2.0, 0.5)])
def test_dist_matches_formula_and_the_authors_code(name, key, tau, beta, gamma):
    s, t, _, _, _ = case(name)
    got = dist_loss(s, t, tau, beta, gamma).item()
    assert got == pytest.approx(REF["dist"][name][key], rel=1e-5)
    assert got == pytest.approx(np_dist(*np_case(name)[:2], tau, beta, gamma), rel=1e-5)


def test_dist_method_temperature_views_and_refusals():
    s, t, ss, ts, y = case("b7c5")
    assert build("dist").tau == 4.0                                  # --kd_T's default
    assert build("dist", "--kd_T", "1").tau == 1.0                   # ImageNet scripts set --kd_T 1
    d = build("dist", "--kd_T", "1", "--dist_tau", "4", "--dist_beta", "2", "--dist_gamma", "0.5")
    assert d.tau == 4.0
    s_out = outputs(s, ss, grad=True)
    loss = d(s_out, outputs(t, ts), Batch(images=torch.zeros(7), targets=y))
    expected = REF["dist"]["b7c5"]["tau4_beta2_gamma0.5"] + dist_loss(ss, ts, 4.0, 2.0, 0.5).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert s_out.logits.grad.abs().sum() > 0
    assert dist_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-5)  # perfect relations
    with pytest.raises(ConfigError, match="batch"):
        build("dist", batch=1)
    with pytest.raises(ConfigError, match="> 0"):
        build("dist", "--dist_tau", "0")


# ---- MLKD --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("key,T,stand", [("T4", 4.0, False), ("ls_T2", 2.0, True)])
def test_mlkd_matches_formula_and_the_official_code(name, key, T, stand):
    s, t, ss, ts, _ = case(name)
    ref = REF["mlkd"][name][key]
    mask, class_mask = confidence_masks(t)
    assert mask.tolist() == ref["mask"] and class_mask.tolist() == ref["class_mask"]
    # both views: the official loss_kd (weak + "strong" sums) + loss_cc + loss_bc
    got = mlkd_loss(s, t, ss, ts, T, stand).item()
    assert got == pytest.approx(ref["loss_kd"] + ref["loss_cc"] + ref["loss_bc"], rel=1e-5)
    assert got == pytest.approx(np_mlkd(*np_case(name)[:4], T, stand), rel=1e-5)
    # one view: the weak-view terms only
    weak = mlkd_loss(s, t, None, None, T, stand).item()
    assert weak == pytest.approx(ref["loss_kd_weak"] + ref["loss_cc"] + ref["loss_bc"], rel=1e-5)
    assert weak == pytest.approx(np_mlkd(*np_case(name)[:2], T=T, stand=stand), rel=1e-5)


def test_mlkd_weights_map_onto_the_loop_and_its_defaults():
    """-c 0.1 -d 0 -b 0.9 is the official 0.1 * (CE_weak + CE_strong) + 0.9 * (KD + cc + bc)."""
    opt = make_opt("mlkd")
    assert opt.strong_aug == "randaugment" and opt.method_defaults == ["strong_aug"]
    assert make_opt("mlkd", "--strong_aug", "none").strong_aug == "none"
    s, t, ss, ts, y = case("b6c5")
    d = build("mlkd", "-c", "0.1", "-d", "0", "-b", "0.9")
    s_out, t_out = outputs(s, ss, grad=True), outputs(t, ts)
    res = loop_losses(d, s_out, t_out, y)
    ref = REF["mlkd"]["b6c5"]["T4"]
    ce = torch.nn.functional.cross_entropy
    expected = 0.1 * (ce(s, y) + ce(ss, y)).item() + 0.9 * (ref["loss_kd"] + ref["loss_cc"] + ref["loss_bc"])
    assert res["loss"].item() == pytest.approx(expected, rel=1e-5)
    res["loss"].backward()
    assert s_out.logits.grad.abs().sum() > 0 and s_out.strong.logits.grad.abs().sum() > 0
    # no second view: the weak terms only, and the loop's CE on the weak view only
    res1 = loop_losses(d, outputs(s), outputs(t), y)
    expected1 = 0.1 * ce(s, y).item() + 0.9 * (ref["loss_kd_weak"] + ref["loss_cc"] + ref["loss_bc"])
    assert res1["loss"].item() == pytest.approx(expected1, rel=1e-5)
    with pytest.raises(ConfigError, match="kd_T"):
        build("mlkd", "--kd_T", "-1")


def test_mlkd_sees_both_views_through_the_loop():
    """A batch that carries a second view (as the --strong_aug loader will serve it): the loop runs the
    student and the teacher on both views, the CE term sums both, and mlkd's term is its two-view sum."""
    from helper.loops import Run, to_batch, train_one_epoch
    from helper.teachers import FrozenTeacher
    from models import model_dict
    torch.manual_seed(0)
    student, teacher = model_dict["cnn_mnist_student"](num_classes=10), model_dict["cnn_mnist_teacher"](num_classes=10)
    gen = torch.Generator().manual_seed(3)
    weak, strong = torch.randn(8, 1, 28, 28, generator=gen), torch.randn(8, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    probe = Outputs(logits=torch.zeros(2, 10))
    opt = make_opt("mlkd", "-c", "0.1", "-d", "0", "-b", "0.9", "--print_freq", "0")
    d = build_distiller("mlkd", BuildContext(opt=opt, s_probe=probe, t_probe=probe, model_s=student, model_t=teacher,
                                             num_classes=10, n_train=8, local_batch_size=8))
    inner = DistillStudent(student, d, opt)
    frozen = FrozenTeacher(teacher)
    frozen.strong = True
    batch = to_batch(((weak, strong), y, torch.arange(8)), "cpu")
    assert torch.equal(batch.images_strong, strong)
    inner.train()
    inner.set_epoch(1)
    t_out = frozen.outputs(weak)
    t_out.strong = frozen.outputs(strong)
    res = inner(batch, t_out)
    with torch.no_grad():
        z_w, z_s, t_w, t_s = student(weak), student(strong), teacher(weak), teacher(strong)
    ce = torch.nn.functional.cross_entropy
    assert res["loss_cls"].item() == pytest.approx((ce(z_w, y) + ce(z_s, y)).item(), rel=1e-5)
    assert res["loss_kd"].item() == pytest.approx(mlkd_loss(z_w, t_w, z_s, t_s, 4.0).item(), rel=1e-5)
    assert res["loss_kd"].item() != pytest.approx(mlkd_loss(z_w, t_w, None, None, 4.0).item(), rel=1e-3)
    # and one epoch of the real loop on such batches trains
    sgd = torch.optim.SGD(inner.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in student.parameters()]
    stats = train_one_epoch(1, [((weak, strong), y, torch.arange(8))] * 2, [Run(opt, inner, sgd, frozen)], "cpu")
    assert stats[0] is not None and math.isfinite(stats[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


# ---- CTKD --------------------------------------------------------------------------------------------------

def test_ctkd_curriculum_is_the_codes_cosine_decay_negated():
    """CTKD multiplies theta's gradient by CosineDecay(0, -1, 10).get_value(epoch): -lambda(epoch)."""
    for name in CASES:
        for key, rec in REF["ctkd"][name].items():
            epoch = int(key[len("epoch"):])
            assert -curriculum_lambda(epoch, 10) == pytest.approx(rec["decay_value"], abs=1e-12)
    assert curriculum_lambda(0, 10) == 0.0 and curriculum_lambda(10, 10) == 1.0 and curriculum_lambda(40, 10) == 1.0
    assert curriculum_lambda(5, 10, 0.5) == pytest.approx(0.25)
    lams = [curriculum_lambda(e, 10) for e in range(0, 12)]
    assert all(a < b for a, b in zip(lams[:10], lams[1:11]))     # easy to hard: rising to 1 at epoch 10


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("epoch", [1, 5, 12])
def test_ctkd_temperature_kd_term_and_reversed_gradient(name, epoch):
    s, t, _, _, y = case(name)
    rec = REF["ctkd"][name][f"epoch{epoch}"]
    d = build("ctkd", "-c", "0.1", "-d", "0.9")
    s_out = outputs(s, grad=True)
    res = loop_losses(d, s_out, outputs(t), y, epoch)   # the loop's set_epoch sets lambda
    T = d.temperature().item()
    assert T == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6) and T == pytest.approx(rec["T"], rel=1e-6)
    assert res["loss_div"].item() == pytest.approx(rec["loss"], rel=1e-5)
    assert res["loss_div"].item() == pytest.approx(np_kd(*np_case(name)[:2], T), rel=1e-5)
    res["loss_div"].backward()   # the KD term alone, as the recorded gradients
    assert d.theta.grad.item() == pytest.approx(rec["theta_grad"], rel=1e-4)
    assert s_out.logits.grad[0, 0].item() == pytest.approx(rec["student_grad_00"], rel=1e-4)
    # independently: dL/dtheta = -lambda * dL/dT * dT/dtheta, dL/dT by central differences in float64
    s64, t64 = np_case(name)[:2]
    h = 1e-4
    dl_dT = (np_kd(s64, t64, T + h) - np_kd(s64, t64, T - h)) / (2 * h)
    sig = 1 / (1 + math.exp(-1.0))
    expected = -curriculum_lambda(epoch, 10) * dl_dT * 20 * sig * (1 - sig)
    assert d.theta.grad.item() == pytest.approx(expected, rel=1e-3)


def test_ctkd_learns_against_the_student_and_logs_its_temperature():
    s, t, _, _, y = case("b6c5")
    d = build("ctkd", "--ctkd_init_T", "4")
    assert d.temperature().item() == pytest.approx(4.0, rel=1e-6)
    d.set_epoch(12)
    sgd = torch.optim.SGD(d.parameters(), lr=1.0)
    before = kd_loss(s, t, d.temperature()).item()
    for _ in range(3):   # theta alone: each step raises the KD loss (the reversed gradient ascends it)
        sgd.zero_grad()
        kd_loss(s, t, d.temperature()).backward()
        sgd.step()
    assert kd_loss(s, t, d.temperature()).item() > before
    calls = []

    class Writer:
        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))
    d.log_tensorboard(Writer(), 12)
    assert [c[0] for c in calls] == ["ctkd/temperature", "ctkd/lambda"]
    assert calls[0][1] == pytest.approx(d.temperature().item()) and calls[1][1] == 1.0
    d.log_tensorboard(None, 12)   # other ranks: nothing to write, no error
    assert "theta" in d.state_dict()


def test_ctkd_refusals():
    with pytest.raises(ConfigError, match="-d"):
        build("ctkd", "-d", "0", "-b", "0", "-c", "1")
    with pytest.raises(ConfigError, match="ctkd_init_T"):
        build("ctkd", "--ctkd_init_T", "21")
    with pytest.raises(ConfigError, match="ctkd_loops"):
        build("ctkd", "--ctkd_loops", "0")


# ---- logit standardisation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_logit_standardisation_matches_formula_and_the_ls_repository(name):
    s, t, _, _, _ = case(name)
    s64, t64 = np_case(name)[:2]
    torch.testing.assert_close(standardize(s), torch.tensor(REF["ls"][name]["normalize_s"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(standardize(s).double().numpy(), np_stand(s64), rtol=1e-5, atol=1e-6)
    got = kd_loss(s, t, 2.0, stand=True).item()
    assert got == pytest.approx(REF["ls"][name]["kd_T2_stand"], rel=1e-5)
    assert got == pytest.approx(np_kd(np_stand(s64), np_stand(t64), 2.0), rel=1e-5)
    assert kd_loss(s, t, 4.0).item() == pytest.approx(REF["ls"][name]["kd_T4_plain"], rel=1e-5)
    # z-scores ignore each sample's shift and positive scale
    assert kd_loss(3 * s + 7, t - 2, 2.0, stand=True).item() == pytest.approx(got, rel=1e-4)


def test_the_loops_kd_term_is_standardised_by_the_flag():
    s, t, _, _, y = case("b6c5")
    for flag, key in (([], "kd_T4_plain"), (["--logit_stand", "--kd_T", "2"], "kd_T2_stand")):
        res = loop_losses(build("kd", "-c", "0", "-d", "1", *flag), outputs(s), outputs(t), y)
        assert res["loss_div"].item() == pytest.approx(REF["ls"]["b6c5"][key], rel=1e-5)


# ---- DOT ---------------------------------------------------------------------------------------------------

def np_dot(rec):
    """DOT's rules: task momentum m - delta and distillation momentum m + delta for a parameter with both
    gradients; (2m)/2 = m for one with only one of them, which then carries the weight decay; first step:
    each buffer is its first gradient (plus weight decay on the task side)."""
    lr, m, dl, wd = rec["lr"], rec["momentum"], rec["delta"], rec["weight_decay"]
    p = {k: np.array(v, dtype=np.float64) for k, v in rec["init"].items()}
    buf_t, buf_k, out = {}, {}, []
    for st in rec["steps"]:
        task = {k: np.array(v) for k, v in st["task"].items()}
        kd = {k: np.array(v) for k, v in st["kd"].items()}
        for k in p:
            if k in task:
                d = task[k] + wd * p[k]
                buf_t[k] = d if k not in buf_t else buf_t[k] * ((m - dl) if k in kd else m) + d
                p[k] = p[k] - lr * buf_t[k]
            if k in kd:
                if k not in buf_k:
                    buf_k[k] = kd[k]
                elif k in task:
                    buf_k[k] = buf_k[k] * (m + dl) + kd[k]
                else:
                    buf_k[k] = buf_k[k] * m + kd[k] + wd * p[k]
                p[k] = p[k] - lr * buf_k[k]
        out.append({k: v.copy() for k, v in p.items()})
    return out


def test_dot_matches_its_rules_and_mdistillers_trainer():
    rec = REF["dot"]
    params = {k: nn.Parameter(torch.tensor(v)) for k, v in rec["init"].items()}
    opt = DOT(list(params.values()), lr=rec["lr"], momentum=rec["momentum"], delta=rec["delta"],
              weight_decay=rec["weight_decay"])
    mine = np_dot(rec)
    for i, st in enumerate(rec["steps"]):
        opt.zero_grad(set_to_none=True)
        for k, v in st["task"].items():
            params[k].grad = torch.tensor(v)
        opt.split_step({params[k]: torch.tensor(v) for k, v in st["kd"].items()})
        for k, p in params.items():
            np.testing.assert_allclose(p.detach().numpy(), rec["params_after_each_step"][i][k], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(p.detach().numpy(), mine[i][k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="dot_delta"):
        DOT([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, delta=0.95)
