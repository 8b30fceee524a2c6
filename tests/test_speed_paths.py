"""Speed paths change speed, never the training: --amp, --channels_last, --compile and the teacher's
inference_mode each give the loss trajectory of the plain fp32 / NCHW / eager / no_grad run.

Every run is built as train_student.py builds it (place, probe, registry, DistillStudent, FrozenTeacher,
prepare, then compile) from the same seed, and trained step by step through ``train_one_epoch`` on the
same batches (resnet14 -> resnet8, 10 classes, batches of 16, then a last partial batch of 8 for methods
that accept one). Tolerances: bf16 autocast 3e-2 relative; channels_last 1e-4 (other CPU conv kernels, same
maths: ~1e-6 on the logits, which CRD's exp(score / 0.07) turns into ~3e-5 on its loss after a few steps);
inference_mode vs no_grad bitwise; torch.compile 1e-5 (inductor fuses and reorders float32 reductions).
"""
from __future__ import annotations

import shutil

import pytest
import torch

import train_student
from dataset.torch_loader import _loader_kwargs
from distiller_zoo import BuildContext, build_distiller, get_distiller_class
from helper.engine import place
from helper.forward import compile_model
from helper.loops import DistillStudent, Run, train_one_epoch, validate
from helper.teachers import FrozenTeacher
from models import model_dict

B, N_CLS, N_TRAIN = 16, 10, 64
METHODS = ("kd", "crd", "semckd", "cka_group")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU: threads only add noise
    yield
    torch.set_num_threads(n)


def make_batches(method: str, partial: bool | None = None):
    """Three full batches, then a partial one unless the method's loader drops it (``partial`` overrides)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N_TRAIN, 3, 32, 32, generator=g)
    targets = torch.randint(0, N_CLS, (N_TRAIN,), generator=g)
    partial = not get_distiller_class(method).drop_last if partial is None else partial
    sizes = [B, B, B] + ([B // 2] if partial else [])
    out, start = [], 0
    for s in sizes:
        out.append((images[start:start + s], targets[start:start + s], torch.arange(start, start + s)))
        start += s
    return out, images, targets


def build(method: str, *, amp=False, channels_last=False, compile=False, inference_mode=True):
    """Student, teacher and distiller exactly as train_student.main_worker wires them."""
    opt = train_student.parse_option(["--distill", method, "--path_t", "unused.pth", "--model_s", "resnet8",
                                      "--batch_size", str(B), "--print_freq", "0", "--trial", "0", "-b", "1"])
    opt.nce_k, opt.cka_images, opt.learning_rate = 32, 32, 0.05
    opt.amp, opt.channels_last, opt.compile = amp, channels_last, compile
    _, images, targets = make_batches(method)
    torch.manual_seed(0)
    student = place(model_dict["resnet8"](num_classes=N_CLS), opt, "cpu")
    model_t = place(model_dict["resnet14"](num_classes=N_CLS), opt, "cpu")
    with torch.no_grad():  # a teacher away from its initialisation (BN statistics), then frozen
        model_t.train()
        model_t(torch.randn(32, 3, 32, 32))
    cls = get_distiller_class(method)

    def plain(n):
        for i in range(0, min(n, N_TRAIN), B):
            yield images[i:i + B]

    ctx = BuildContext(opt=opt, s_probe=train_student.probe(student, cls.needs, (3, 32, 32), "cpu"),
                       t_probe=train_student.probe(model_t, cls.needs, (3, 32, 32), "cpu"), model_s=student,
                       model_t=model_t, num_classes=N_CLS, n_train=N_TRAIN, local_batch_size=B,
                       train_targets=targets, plain_train_images=plain)
    distiller = build_distiller(method, ctx)
    inner = place(DistillStudent(student, distiller, opt), opt, "cpu")
    teacher = FrozenTeacher(model_t, cls.needs, inference_mode=inference_mode,
                            layer_transform=distiller.layer_transform)
    distiller.prepare(lambda *a: None)
    if compile:
        for m in (student, model_t):
            compile_model(m)
    sgd = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    return opt, inner, teacher, sgd


class StepRecorder:
    """Stands in for the step module (the DDP slot of train_one_epoch) and keeps every step's loss terms."""

    def __init__(self, inner):
        self.inner, self.steps = inner, []

    def __call__(self, batch, t_out, stage):
        res = self.inner(batch, t_out, stage)
        self.steps.append([float(res[k].detach()) for k in ("loss", "loss_cls", "loss_div", "loss_kd")])
        return res


def trajectory(method: str, partial: bool | None = None, **paths):
    """Per-step losses of one short epoch, then the validation loss and accuracy of the trained student."""
    opt, inner, teacher, sgd = build(method, **paths)
    batches, _, _ = make_batches(method, partial)
    rec = StepRecorder(inner)
    train_one_epoch(1, batches, [Run(opt, inner, sgd, teacher, step_module=rec)], "cpu", log=lambda *a: None)
    val = validate(inner.predict, [(x, y) for x, y, _ in batches], "cpu", opt)
    return (torch.tensor(rec.steps, dtype=torch.float64),
            torch.tensor([val["loss"], val["acc1"]], dtype=torch.float64))


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_same_losses(method):
    ref, ref_val = trajectory(method)
    got, got_val = trajectory(method, channels_last=True)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_val, ref_val, rtol=1e-4, atol=1e-5)


def test_channels_last_reaches_models_and_inputs():
    opt, inner, teacher, sgd = build("kd", channels_last=True)
    conv = inner.student.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert next(teacher.model.parameters()).dim() == 4 and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in teacher.model.parameters() if p.dim() == 4)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last))) for m in (inner.student, teacher.model)]
    batches, _, _ = make_batches("kd")
    train_one_epoch(1, batches[:1], [Run(opt, inner, sgd, teacher)], "cpu", log=lambda *a: None)
    for h in hooks:
        h.remove()
    assert seen == [True, True]  # teacher and student both got NHWC images


@pytest.mark.parametrize("method", METHODS)
def test_amp_same_losses_within_bf16(method):
    ref, ref_val = trajectory(method)
    got, got_val = trajectory(method, amp=True)
    assert not torch.equal(got, ref), "--amp changed nothing: autocast did not run"
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got_val[0], ref_val[0], rtol=3e-2, atol=3e-2)


def test_amp_runs_teacher_in_bf16_and_losses_in_float32():
    opt, inner, teacher, sgd = build("cka_group", amp=True)
    dtypes = {}

    def seen(name):
        def hook(module, args, output):
            dtypes.setdefault(name, output.dtype)
        return hook

    hooks = [inner.student.fc.register_forward_hook(seen("student")),
             teacher.model.fc.register_forward_hook(seen("teacher"))]
    batches, _, _ = make_batches("cka_group")
    x, y, idx = batches[0]
    from distiller_zoo.base import Batch
    from helper.loops import autocast
    from helper.teachers import for_student
    batch = Batch(images=x, targets=y, index=idx)
    with autocast(opt, "cpu"):
        t_out = teacher.outputs(x)
        res = inner(batch, for_student(t_out))
    for h in hooks:
        h.remove()
    assert dtypes == {"student": torch.bfloat16, "teacher": torch.bfloat16}
    for k in ("loss", "loss_cls", "loss_div", "loss_kd"):
        assert res[k].dtype == torch.float32, k


@pytest.mark.parametrize("method", METHODS)
def test_inference_mode_teacher_same_losses_as_no_grad(method):
    ref, ref_val = trajectory(method, inference_mode=False)
    got, got_val = trajectory(method, inference_mode=True)
    assert torch.equal(got, ref) and torch.equal(got_val, ref_val)


def _compiler_missing():
    return shutil.which("g++") is None and shutil.which("c++") is None


@pytest.mark.skipif(_compiler_missing(), reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
def test_compile_same_losses_with_layer_hooks_and_static_shapes():
    """cka_group records block outputs by forward hooks: compiled after they exist, the graphs contain them.
    The epoch ends with a partial batch (8 of 16), which runs eagerly: no graph is compiled for its shape.
    One method only: each compilation takes about a minute on two CPU cores."""
    from torch._dynamo.utils import counters
    ref, ref_val = trajectory("cka_group", partial=True)
    torch._dynamo.reset()
    counters.clear()
    opt, inner, teacher, sgd = build("cka_group", compile=True)
    batches, _, _ = make_batches("cka_group", partial=True)
    rec = StepRecorder(inner)
    graphs = []
    train_one_epoch(1, batches[:1], [Run(opt, inner, sgd, teacher, step_module=rec)], "cpu", log=lambda *a: None)
    graphs.append(counters["stats"]["unique_graphs"])
    train_one_epoch(1, batches[1:], [Run(opt, inner, sgd, teacher, step_module=rec)], "cpu", log=lambda *a: None)
    graphs.append(counters["stats"]["unique_graphs"])
    got = torch.tensor(rec.steps, dtype=torch.float64)
    torch.testing.assert_close(got[:3], ref[:3], rtol=1e-5, atol=1e-5)
    # the partial batch's unbiased CKA (8 samples, normalised by B(B-3) = 40) magnifies the ~1e-7 weight
    # differences the three compiled steps left into ~4e-5 on its loss, and its gradient carries that into
    # the weights the validation below sees
    torch.testing.assert_close(got[3:], ref[3:], rtol=1e-4, atol=1e-4)
    assert graphs[0] >= 2, f"student and teacher were not both compiled: {graphs}"
    assert graphs[1] == graphs[0], f"later steps (or the partial batch) compiled new graphs: {graphs}"
    val = validate(inner.predict, [(x, y) for x, y, _ in batches], "cpu", opt)
    torch.testing.assert_close(torch.tensor([val["loss"], val["acc1"]], dtype=torch.float64), ref_val,
                               rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


def test_compile_mode_flag():
    opt = train_student.parse_option(["--path_t", "t.pth", "--compile", "--compile_mode", "reduce-overhead"])
    assert opt.compile and opt.compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit):
        train_student.parse_option(["--path_t", "t.pth", "--compile_mode", "fastest"])
    with pytest.raises(ValueError):
        compile_model(torch.nn.Linear(2, 2), "fastest")


def test_torch_loader_pins_memory_and_keeps_workers_on_cuda():
    cuda = _loader_kwargs(4, "cuda", 0)
    assert cuda["pin_memory"] and cuda["persistent_workers"] and cuda["num_workers"] == 4
    cpu = _loader_kwargs(0, "cpu", 0)
    assert not cpu["pin_memory"] and "persistent_workers" not in cpu


def test_epoch_metrics_are_batch_weighted_means_of_the_steps():
    """train_one_epoch sums every metric in one device tensor; its averages equal the per-step terms'."""
    opt, inner, teacher, sgd = build("kd")
    for g in sgd.param_groups:
        g["momentum"], g["weight_decay"] = 0.0, 0.0
    opt.learning_rate = 0.0  # parameters stay put; train-mode BN uses batch statistics either way
    batches, _, _ = make_batches("kd")
    from distiller_zoo.base import Batch
    from helper.teachers import for_student
    want = torch.zeros(4, dtype=torch.float64)
    n = 0
    inner.train()
    with torch.no_grad():
        for x, y, idx in batches:
            res = inner(Batch(images=x, targets=y, index=idx), for_student(teacher.outputs(x)))
            want += torch.tensor([float(res[k]) for k in ("loss", "loss_cls", "loss_div", "loss_kd")],
                                 dtype=torch.float64) * y.size(0)
            n += y.size(0)
    out = train_one_epoch(1, batches, [Run(opt, inner, sgd, teacher)], "cpu", log=lambda *a: None)[0]
    got = torch.tensor([out[k] for k in ("loss", "loss_cls", "loss_div", "loss_kd")], dtype=torch.float64)
    torch.testing.assert_close(got, want / n, rtol=1e-5, atol=1e-6)
