"""The CUDA paths, each once, small and fast: marked ``cuda`` and skipped without a CUDA device.

No session that built this codebase had a GPU, so these tests were written from the APIs' documentation;
their first run is ``benchmarks/gpu_check.sh`` (step 1, ``pytest -m cuda``). Each exercises what the CPU
suite cannot:

* the tensor loader resident on the GPU: the uint8 split on the device, batches on the device, crops and
  flips drawn from device generators, the indices of the CPU loader;
* a kd and a cka_group step with bf16 autocast + channels_last + inference-mode teacher: finite, within
  bf16 of the fp32 / NCHW / no_grad trajectory on the same batches; cka_group's CKA in float32;
* torch.compile(mode="reduce-overhead") (CUDA graphs): steps, a last partial batch (eager) and
  validation without new graphs and without CUDA-graph skips, within float tolerance of eager;
* DALI's GPU pipelines (``--dali gpu``): tests/test_dali.py's essential checks with every tensor on the
  device, and nvJPEG on an ImageNet-layout folder of JPEGs;
* a group (train_group.py) of kd, crd, cka_group and FitNet with its init stage on CUDA with
  ``--deterministic``: every student bitwise its separate run; RNGStream swaps the CUDA generator;
* a 1-process torchrun with ``--dist-backend nccl`` and ``--dali gpu`` (two NCCL ranks need two GPUs).

Models: resnet14 -> resnet8, batches of 16, 10 or 100 classes, tens of images.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

# --deterministic (the group test) needs cuBLAS's fixed workspace, read when its handle is created
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dataset.tensor_loader as tensor_loader  # noqa: E402
import train_group  # noqa: E402
import train_student  # noqa: E402
import train_teacher  # noqa: E402
from dataset import DATASETS, get_dataloaders  # noqa: E402
from distiller_zoo import BuildContext, build_distiller, get_distiller_class  # noqa: E402
from fakedata import make_cifar  # noqa: E402
from helper.engine import place  # noqa: E402
from helper.forward import compile_model  # noqa: E402
from helper.loops import DistillStudent, Run, train_one_epoch, validate  # noqa: E402
from helper.teachers import FrozenTeacher  # noqa: E402
from helper.util import RNGStream  # noqa: E402
from models import model_dict  # noqa: E402
from test_dali import HAVE_DALI, WHY, _ds_indices, _recover, denorm  # noqa: E402
from test_group import FOLDERS, ROWS, assert_bitwise, folder, metrics, state  # noqa: E402
from test_speed_paths import B, N_CLS, N_TRAIN, StepRecorder, make_batches  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = torch.device("cuda", 0)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason=WHY or "nvidia.dali missing")


@pytest.fixture(autouse=True)
def global_flags():
    """--deterministic, cudnn.benchmark and TF32 are process-wide: each test leaves them as it found them."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved[:3]
    torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


def on_device(*tensors) -> bool:
    return all(t.device.type == DEV.type for t in tensors)


# ------------------------------------------------------------------------------ RNG streams
def test_rng_stream_swaps_the_cuda_generator():
    """A group student's draws on the GPU come from its own stream; the process's CUDA state is untouched."""
    torch.manual_seed(123)
    outer_cuda, outer_cpu = torch.cuda.get_rng_state(DEV), torch.get_rng_state()
    a, b = RNGStream(1, DEV), RNGStream(2, DEV)
    with a:
        a1 = torch.rand(5, device=DEV)
    with b:
        b1 = torch.rand(5, device=DEV)
    with a:
        a2 = torch.rand(5, device=DEV)
    assert torch.equal(torch.cuda.get_rng_state(DEV), outer_cuda) and torch.equal(torch.get_rng_state(), outer_cpu)
    torch.manual_seed(1)  # stream a alone: the same two draws
    want1, want2 = torch.rand(5, device=DEV), torch.rand(5, device=DEV)
    assert torch.equal(a1, want1) and torch.equal(a2, want2) and not torch.equal(a1, b1)


# ------------------------------------------------------------------------------ tensor loader
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cuda_cifar"), "cifar100", n_train=300, n_test=100, seed=5)


def test_tensor_loader_lives_on_the_device(cifar, monkeypatch):
    opt = SimpleNamespace(dataset="cifar100", data_folder=cifar, batch_size=64, num_workers=0, seed=3,
                          loader="tensor", train_subset=0, download=False, drop_last=False)
    gens = []
    real_generator = tensor_loader._generator

    def generator(device, seed):
        gens.append(real_generator(device, seed))
        return gens[-1]

    monkeypatch.setattr(tensor_loader, "_generator", generator)
    gpu = get_dataloaders(opt, (3, 32, 32), device=DEV)
    cpu = get_dataloaders(opt, (3, 32, 32), device="cpu")
    stored = gpu.train_loader.images
    assert stored.device.type == DEV.type and stored.dtype == torch.uint8 and stored.shape == (300, 3, 32, 32)
    assert gpu.val_loader.images.device.type == DEV.type and gpu.val_loader.images.dtype == torch.uint8
    originals = cpu.train_loader.images.to(DEV)  # uint8 NCHW, as stored
    spec = DATASETS["cifar100"]
    offsets = []
    for epoch in (1, 2):
        gpu.set_epoch(epoch)
        cpu.set_epoch(epoch)
        got, want = list(gpu.train_loader), list(cpu.train_loader)
        assert [len(b[1]) for b in got] == [64, 64, 64, 64, 44]
        for (x, y, i), (_, cy, ci) in zip(got, want):
            assert on_device(x, y, i) and x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
            assert torch.equal(i.cpu(), ci) and torch.equal(y.cpu(), cy)  # the CPU loader's order and labels
            offsets.append(crop_offsets(x, originals[i], spec))
        gpu.set_epoch(epoch)  # an epoch's augmentation is a function of (seed, epoch)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, gpu.train_loader))
    assert gens and all(g.device.type == DEV.type for g in gens)  # drawn on the device
    dy, dx, flip = torch.cat(offsets).T.tolist()
    # 600 draws: every offset of RandomCrop(32, padding=4) occurs, and the flip is a fair coin (4 sigma: 0.08)
    assert set(dy) == set(dx) == set(range(9)) and abs(sum(flip) / len(flip) - 0.5) < 0.08
    vx = torch.cat([x for x, _ in gpu.val_loader])
    cx = torch.cat([x for x, _ in cpu.val_loader])
    assert vx.device.type == DEV.type and torch.allclose(vx.cpu(), cx, atol=1e-5)
    plain = torch.cat(list(gpu.plain_train_images(100)))
    assert plain.shape == (100, 3, 32, 32) and plain.device.type == DEV.type


def crop_offsets(x: torch.Tensor, originals: torch.Tensor, spec) -> torch.Tensor:
    """(dy, dx, flip) of each augmented image: the one crop of its zero-padded original (a random image)
    that reproduces it exactly; fails if none does."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    u = (x * std * 255 + mean * 255).round().clamp(0, 255).to(torch.uint8)
    padded = F.pad(originals, (4, 4, 4, 4))
    found = torch.full((len(x), 3), -1, dtype=torch.long, device=x.device)
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, :, dy:dy + 32, dx:dx + 32]
            for flip in (0, 1):
                hit = ((crop.flip(-1) if flip else crop) == u).flatten(1).all(1)
                found[hit] = torch.tensor([dy, dx, flip], device=x.device)
    assert (found >= 0).all(), "an augmented image is no crop/flip of its original"
    return found.cpu()


# ------------------------------------------------------------------------------ speed paths of a step
def build(method: str, *, amp=False, channels_last=False, inference_mode=True, compile_mode=None):
    """Student, teacher and distiller on the GPU as train_student.py wires them (same seed every call)."""
    opt = train_student.parse_option(["--distill", method, "--path_t", "unused.pth", "--model_s", "resnet8",
                                      "--batch_size", str(B), "--print_freq", "0", "--trial", "0", "-b", "1",
                                      "--device", "cuda"])
    opt.nce_k, opt.cka_images, opt.learning_rate = 32, 32, 0.05
    opt.amp, opt.channels_last = amp, channels_last
    opt.compile, opt.compile_mode = compile_mode is not None, compile_mode or "default"
    _, images, targets = make_batches(method)
    torch.manual_seed(0)
    student = place(model_dict["resnet8"](num_classes=N_CLS), opt, DEV)
    model_t = place(model_dict["resnet14"](num_classes=N_CLS), opt, DEV)
    with torch.no_grad():  # a teacher away from its initialisation (BN statistics), then frozen
        model_t.train()
        model_t(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(DEV))
    cls = get_distiller_class(method)

    def plain(n):
        for i in range(0, min(n, N_TRAIN), B):
            yield images[i:i + B].to(DEV)

    ctx = BuildContext(opt=opt, s_probe=train_student.probe(student, cls.needs, (3, 32, 32), DEV),
                       t_probe=train_student.probe(model_t, cls.needs, (3, 32, 32), DEV), model_s=student,
                       model_t=model_t, num_classes=N_CLS, n_train=N_TRAIN, local_batch_size=B,
                       train_targets=targets, device=DEV, plain_train_images=plain)
    distiller = build_distiller(method, ctx).to(DEV)
    inner = place(DistillStudent(student, distiller, opt), opt, DEV)
    teacher = FrozenTeacher(model_t, cls.needs, inference_mode=inference_mode,
                            layer_transform=distiller.layer_transform)
    distiller.prepare(lambda *a: None)
    if opt.compile:  # as train_student.py: after the runners' hooks exist
        for m in (student, model_t):
            compile_model(m, opt.compile_mode)
    sgd = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    return opt, inner, teacher, sgd


def trajectory(method: str, schedule, watch=None, val_batches=None, **paths):
    """Per-step loss terms over ``schedule`` [(epoch, batches), ...] (train_one_epoch calls), then the
    validation loss and accuracy of the trained student on ``val_batches`` (default: the first call's)."""
    opt, inner, teacher, sgd = build(method, **paths)
    if watch is not None:
        watch(inner, teacher)
    rec = StepRecorder(inner)
    run = Run(opt, inner, sgd, teacher, step_module=rec)
    for epoch, batches in schedule:
        train_one_epoch(epoch, batches, [run], DEV, log=lambda *a: None)
    val = validate(inner.predict, [(x, y) for x, y, _ in val_batches or schedule[0][1]], DEV, opt)
    return (torch.tensor(rec.steps, dtype=torch.float64),
            torch.tensor([val["loss"], val["acc1"]], dtype=torch.float64))


def watch_paths(seen: dict):
    """Hooks that record what the speed paths did: output dtypes, input memory formats, inference mode."""
    def watch(inner, teacher):
        for name, model in (("student", inner.student), ("teacher", teacher.model)):
            def before(module, args, name=name):
                seen.setdefault(f"{name}_input", (args[0].is_contiguous(memory_format=torch.channels_last),
                                                  torch.is_inference_mode_enabled()))

            def after(module, args, out, name=name):
                seen.setdefault(f"{name}_logits", out.dtype)

            model.register_forward_pre_hook(before)
            model.fc.register_forward_hook(after)
    return watch


@pytest.mark.parametrize("method", ["kd", "cka_group"])
def test_amp_channels_last_inference_mode_within_bf16_of_fp32(method):
    """All three paths on against all off, on the same batches (kd's epoch ends with a partial batch).
    bf16 keeps 8 bits of mantissa: 3e-2 relative, as tests/test_speed_paths.py on the CPU."""
    batches, _, _ = make_batches(method)
    ref, ref_val = trajectory(method, [(1, batches)], inference_mode=False)
    seen = {}
    got, got_val = trajectory(method, [(1, batches)], watch=watch_paths(seen), amp=True, channels_last=True)
    assert seen == {"student_input": (True, False), "teacher_input": (True, True),
                    "student_logits": torch.bfloat16, "teacher_logits": torch.bfloat16}, seen
    assert torch.isfinite(got).all() and torch.isfinite(got_val).all()
    assert not torch.equal(got, ref), "--amp changed nothing: autocast did not run"
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got_val[0], ref_val[0], rtol=3e-2, atol=3e-2)


def test_cka_group_computes_cka_in_float32_under_amp():
    """The block outputs are bf16 under autocast; the CKA matrix must be float32 and equal to the one
    computed with autocast off from the same (upcast) layers."""
    opt, inner, teacher, sgd = build("cka_group", amp=True, channels_last=True)
    distiller, seen = inner.distiller, {}
    real_cka = distiller.cka

    def cka(s_layers, t_layers):
        c = real_cka(s_layers, t_layers)
        with torch.autocast(DEV.type, enabled=False), torch.no_grad():
            exact = real_cka([f.float() for f in s_layers], [f.float() for f in t_layers])
        seen.update(layers={f.dtype for f in s_layers}, matrix=c.dtype, err=float((c.float() - exact).abs().max()))
        return c

    distiller.cka = cka
    batches, _, _ = make_batches("cka_group")
    out = train_one_epoch(1, batches[:1], [Run(opt, inner, sgd, teacher)], DEV, log=lambda *a: None)[0]
    assert math.isfinite(out["loss_kd"])
    assert torch.bfloat16 in seen["layers"], seen  # the test saw bf16 activations
    assert seen["matrix"] == torch.float32 and seen["err"] < 1e-5, seen


# ------------------------------------------------------------------------------ DALI on the GPU
@pytest.fixture(scope="module")
def dali_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("cuda_dali")
    n_ramp = 1800
    ramp = np.zeros((n_ramp, 32, 32, 3), np.uint8)  # tests/test_dali.py's: channel 0 the column, 1 the row
    ramp[..., 0] = 20 + 7 * np.arange(32)[None, None, :]
    ramp[..., 1] = 20 + 7 * np.arange(32)[None, :, None]
    ramp[..., 2] = np.random.default_rng(0).integers(0, 256, (n_ramp, 32, 32))
    pos = np.repeat((10 + np.arange(240, dtype=np.uint8))[:, None], 32 * 32 * 3, 1).reshape(240, 32, 32, 3)
    return {"ramp": make_cifar(base / "ramp", "cifar10", train_images=ramp, n_test=20, seed=4),
            "pos": make_cifar(base / "pos", "cifar100", train_images=pos, test_images=pos[:100], seed=1),
            "jpeg": make_jpeg_folder(base / "imagenet")}


def make_jpeg_folder(root, n_classes=3, n_per_class=5, size=(40, 48)) -> str:
    """ImageNet layout of smooth JPEGs (quality 95): nvJPEG's and libjpeg-turbo's decodes differ by about a
    grey level on smooth images, where chroma upsampling choices hardly matter."""
    from PIL import Image

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(7)
    for split in ("train", "val"):
        for c in range(n_classes):
            os.makedirs(os.path.join(root, split, f"n{c:08d}"))
            for k in range(n_per_class):
                f = rng.uniform(0.5, 2.0, (3, 2))
                img = np.stack([128 + 100 * np.sin(2 * np.pi * (f[j, 0] * xx + f[j, 1] * yy) + j) for j in range(3)], -1)
                Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, split, f"n{c:08d}", f"{k}.JPEG"),
                                                           quality=95)
    return str(root)


def dali_opt(**kw):
    base = dict(dataset="cifar100", data_folder="./data", batch_size=64, num_workers=2, seed=0, train_subset=0,
                download=False, loader="auto", drop_last=False, dali="gpu")
    return SimpleNamespace(**{**base, **kw})


def dali_epoch(bundle, epoch):
    bundle.set_epoch(epoch)
    out = list(bundle.train_loader)
    assert all(on_device(*b) for b in out), "a DALI gpu batch left the device"
    return out


@needs_dali
def test_dali_gpu_cifar_batches_order_and_shards(dali_roots):
    b = get_dataloaders(dali_opt(data_folder=dali_roots["pos"]), (3, 32, 32), device=DEV)
    assert (b.loader, b.n_train, b.n_val) == ("dali", 240, 100)
    batches = dali_epoch(b, 0)
    assert [len(x) for x, _, _ in batches] == [64, 64, 64, 48]
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1:] == (3, 32, 32)
        assert y.dtype == idx.dtype == torch.long and torch.equal(b.train_targets[idx.cpu()], y.cpu())
        assert np.array_equal(denorm(x, "cifar100")[:, 0, 16, 16].astype(int) - 10, idx.cpu().numpy())
    val = list(b.val_loader)
    assert all(on_device(*v) for v in val)
    vx = torch.cat([v[0] for v in val])
    assert (denorm(vx, "cifar100").reshape(100, -1) == (10 + np.arange(100))[:, None]).all()
    for rank in (0, 1):  # each rank's list is the DistributedSampler's, as the tensor loader's
        opt = dali_opt(data_folder=dali_roots["pos"], batch_size=64, seed=7)
        r = get_dataloaders(opt, (3, 32, 32), device=DEV, rank=rank, world_size=2)
        t = get_dataloaders(dali_opt(**{**vars(opt), "dali": None}), (3, 32, 32), device=DEV, rank=rank,
                            world_size=2)
        got = torch.cat([i for _, _, i in dali_epoch(r, 5)]).tolist()
        t.set_epoch(5)
        assert got == _ds_indices(240, rank, 2, 7, 5, False) == torch.cat([i for _, _, i in t.train_loader]).tolist()


@needs_dali
def test_dali_gpu_crop_flip_statistics_and_reproducibility(dali_roots):
    """tests/test_dali.py's CPU checks, on the GPU pipeline: offsets uniform on {0..8}^2, independent of each
    other and of the flip, the tensor loader's image statistics; an epoch is a function of (seed, epoch)."""
    from scipy import stats
    opt = dali_opt(dataset="cifar10", data_folder=dali_roots["ramp"], batch_size=300)
    b = get_dataloaders(opt, (3, 32, 32), device=DEV)
    t = get_dataloaders(dali_opt(**{**vars(opt), "dali": None}), (3, 32, 32), device=DEV)
    x = torch.cat([g[0] for g in dali_epoch(b, 0)])
    t.set_epoch(0)
    tx = torch.cat([g[0] for g in t.train_loader])
    dx, dy, flipped, left_pad = _recover(x)
    assert abs(left_pad.mean() - 4 / 9) < 0.05 and abs(flipped.mean() - 0.5) < 0.05, (left_pad.mean(), flipped.mean())
    for d in (dx, dy):
        assert d.min() == 0 and d.max() == 8 and stats.chisquare(np.bincount(d, minlength=9)).pvalue > 1e-4
    assert stats.chi2_contingency(np.histogram2d(dx, dy, bins=9, range=[[-0.5, 8.5]] * 2)[0]).pvalue > 1e-4
    assert stats.chi2_contingency(np.histogram2d(dx, flipped, bins=[9, 2])[0]).pvalue > 1e-4
    assert torch.allclose(x.mean(dim=(0, 2, 3)), tx.mean(dim=(0, 2, 3)), atol=0.04)
    assert torch.allclose(x.std(dim=(0, 2, 3)), tx.std(dim=(0, 2, 3)), atol=0.04)
    small = dali_opt(dataset="cifar10", data_folder=dali_roots["ramp"], batch_size=128, train_subset=600)
    run = get_dataloaders(small, (3, 32, 32), device=DEV)
    for e in (1, 2):
        dali_epoch(run, e)
    run.set_epoch(3)
    next(iter(run.train_loader))  # an interrupted pass leaves nothing behind
    uninterrupted = dali_epoch(run, 3)
    fresh = dali_epoch(get_dataloaders(dali_opt(**{**vars(small), "num_workers": 1}), (3, 32, 32), device=DEV), 3)
    assert all(torch.equal(p, q) for a, c in zip(uninterrupted, fresh) for p, q in zip(a, c))
    assert not torch.equal(dali_epoch(run, 4)[0][2], uninterrupted[0][2])


@needs_dali
def test_dali_gpu_imagenet_jpeg_pipeline(dali_roots):
    """nvJPEG (the 'mixed' decoder) + random resized crop + resize on the GPU; validation against torchvision."""
    mk = dict(dataset="imagenet", data_folder=dali_roots["jpeg"], batch_size=4)
    b = get_dataloaders(dali_opt(**mk), (3, 224, 224), device=DEV)
    tv = get_dataloaders(dali_opt(**mk, dali=None, num_workers=0), (3, 224, 224), device=DEV)
    assert (b.n_train, b.n_val) == (15, 15)
    for e in (0, 1):
        got = dali_epoch(b, e)
        tv.set_epoch(e)
        assert [x.shape for x, _, _ in got] == [(4, 3, 224, 224)] * 3 + [(3, 3, 224, 224)]
        assert [i.tolist() for _, _, i in got] == [i.tolist() for _, _, i in tv.train_loader]
        assert all(torch.equal(b.train_targets[i.cpu()], y.cpu()) for _, y, i in got)
    assert not torch.equal(dali_epoch(b, 0)[0][0], dali_epoch(b, 1)[0][0])  # augmented per epoch
    val = [torch.cat(t) for t in zip(*b.val_loader)]
    again = [torch.cat(t) for t in zip(*b.val_loader)]
    tval = [torch.cat(t) for t in zip(*tv.val_loader)]
    assert on_device(*val) and all(torch.equal(p, q) for p, q in zip(val, again))  # deterministic
    assert torch.equal(val[1].cpu(), tval[1].cpu())
    assert (val[0].cpu() - tval[0].cpu()).abs().mean() < 0.05  # decoders and resize kernels differ slightly


# ------------------------------------------------------------------------------ group, NCCL (end to end)
TINY = ["--dataset", "cifar100", "--batch_size", "16", "--print_freq", "2", "--num_workers", "0", "--save_freq", "0",
        "--lr_decay_epochs", "1", "--deterministic", "--device", "cuda"]


@pytest.fixture(scope="module")
def group_files(tmp_path_factory):
    """tests/test_group.py's data (72 CIFAR-100 images) and a resnet14 teacher trained 1 epoch on the GPU."""
    root = tmp_path_factory.mktemp("cuda_group")
    data = make_cifar(str(root / "data"), "cifar100", n_train=72, n_test=32, seed=0)
    save = str(root / "teacher")
    train_teacher.main(["--model", "resnet14", "--data_folder", data, "--epochs", "1", "--save_dir", save] + TINY)
    return data, os.path.join(save, "teachers", "models", "resnet14_vanilla_cifar100_trial_0", "resnet14_best.pth")


def test_group_on_cuda_is_bitwise_its_separate_runs(group_files, tmp_path):
    """kd, crd, cka_group and FitNet (init stage) as one group on the GPU, then each separate run: with
    --deterministic (cuDNN's deterministic algorithms, fixed cuBLAS workspace) the same kernels run on the
    same inputs in both, so weights, distiller state, optimiser state and metrics must be bitwise equal."""
    data, teacher = group_files
    g_save, s_save = str(tmp_path / "group"), str(tmp_path / "separate")
    argv = ["--path_t", teacher, "--model_s", "resnet8", "--data_folder", data, "--epochs", "2", "--save_dir", g_save,
            "--trial", "3"] + TINY
    for row in ROWS.values():
        argv += ["--student", row]
    opts = train_group.parse_group(argv)
    assert [s["status"] for s in train_group.main(argv)] == ["finished"] * len(ROWS)
    for opt, name in zip(opts, ROWS):
        cmd = shlex.split(opt.separate_command)[2:]
        cmd[cmd.index("--save_dir") + 1] = s_save
        train_student.main(cmd)
        fa, fb = folder(g_save, *FOLDERS[name]), folder(s_save, *FOLDERS[name])
        a, b = state(os.path.join(fa, "resnet8_last.pth")), state(os.path.join(fb, "resnet8_last.pth"))
        assert_bitwise(a, b, name)
        ma, mb = metrics(fa), metrics(fb)
        for rec in ma + mb:
            rec.pop("epoch_time"), rec.pop("img_per_s")
        assert ma == mb, name
        assert json.load(open(os.path.join(fa, "parameters.json")))["device"] == DEV.type


def test_torchrun_one_process_nccl_with_dali_gpu(group_files, tmp_path):
    """train_student.py under torchrun (1 process: NCCL refuses two ranks on one GPU) with --dist-backend nccl
    and --dali gpu: the run finishes, its metrics are all-reduced through NCCL, rank 0 writes once."""
    if not HAVE_DALI:
        pytest.skip(WHY)
    data, teacher = group_files
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(NCCL_DEBUG="INFO", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "train_student.py",
           "--path_t", teacher, "--model_s", "resnet8", "--distill", "kd", "--data_folder", data, "--epochs", "2",
           "--dist-backend", "nccl", "--dali", "gpu", "--save_dir", str(tmp_path), "--trial", "0"] + [
        a for a in TINY if a not in ("--deterministic",)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "NCCL INFO" in out, out[-4000:]  # NCCL's own log: its communicator carried the collectives
    (run,) = glob.glob(os.path.join(tmp_path, "students", "models", "*"))
    params = json.load(open(os.path.join(run, "parameters.json")))
    assert (params["dist_backend"], params["dali"], params["world_size"]) == ("nccl", "gpu", 1)
    lines = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == [1, 2] and all(math.isfinite(r["train_loss"]) for r in lines)
    assert json.load(open(os.path.join(run, "summary.json")))["status"] == "finished"
    assert os.path.isfile(os.path.join(run, "resnet8_last.pth"))


# ------------------------------------------------------------------------------ torch.compile + CUDA graphs
def test_compile_reduce_overhead_cuda_graphs_without_recompilation():
    """cka_group (layer hooks traced into the graphs) under mode="reduce-overhead": three full batches, the
    partial last batch (eager, force_eager stance), a second epoch, then validation twice. After the first
    two steps (warm-up and recording) nothing compiles again and no graph falls back from CUDA graphs.
    Tolerance 1e-3 against eager on the GPU: both use cuDNN's convolutions, but inductor's fused BatchNorm
    reductions add in another order, and the partial batch's unbiased CKA (B = 8) magnifies the difference;
    stale CUDA-graph outputs or a wrongly traced hook would be O(1) off. TF32 convolutions are switched off
    for both runs: inductor may pick another memory layout, hence another cuDNN algorithm, and two TF32
    algorithms differ by ~1e-3 relative."""
    from torch._dynamo.utils import counters
    torch.backends.cudnn.allow_tf32 = False
    batches, _, _ = make_batches("cka_group", partial=True)
    schedule = [(1, batches[:2]), (1, batches[2:]), (2, batches)]
    ref, ref_val = trajectory("cka_group", schedule, val_batches=batches)
    torch._dynamo.reset()
    counters.clear()
    opt, inner, teacher, sgd = build("cka_group", compile_mode="reduce-overhead")
    rec = StepRecorder(inner)
    run = Run(opt, inner, sgd, teacher, step_module=rec)
    graphs = []
    for epoch, part in schedule:
        train_one_epoch(epoch, part, [run], DEV, log=lambda *a: None)
        graphs.append(counters["stats"]["unique_graphs"])
    val = []
    for _ in range(2):  # full batches compiled (eval mode: graphs of their own), the partial one eager
        val.append(validate(inner.predict, [(x, y) for x, y, _ in batches], DEV, opt))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 2, f"student and teacher were not both compiled: {graphs}"
    assert graphs[1] == graphs[2] == graphs[0], f"later steps or the partial batch compiled new graphs: {graphs}"
    assert graphs[4] == graphs[3] > graphs[2], f"validation: not compiled, or compiled twice: {graphs}"
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    got = torch.tensor(rec.steps, dtype=torch.float64)
    assert got.shape == ref.shape == (10, 4) and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    got_val = torch.tensor([val[0]["loss"], val[0]["acc1"]], dtype=torch.float64)
    assert val[0] == val[1]  # replayed graphs, same weights: the same numbers
    torch.testing.assert_close(got_val, ref_val, rtol=1e-3, atol=1e-3)
    torch._dynamo.reset()
