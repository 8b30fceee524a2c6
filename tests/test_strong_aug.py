"""The strong view (``--strong_aug randaugment``, dataset/randaugment.py): MLKD's RandAugment + Cutout.

* the ops and whole RandAugment calls against MLKD's own outputs (tests/data/mlkd_randaugment.json: its
  code run on a fixed image, the draws it made recorded), and the tensor ops against PIL on fixed images;
* the draws' distribution; each sample of a batch its own plan;
* the loaders: the weak view bitwise unchanged by turning the strong view on, determinism per (seed,
  epoch), the Cutout colour in both loaders, the tuple through ``helper.loops.to_batch``;
* train_student.py --strong_aug randaugment end to end through each loader.
"""
from __future__ import annotations

import base64
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import train_student
import train_teacher
from dataset import DATASETS, get_dataloaders
from dataset.randaugment import (FILL_GREY, FILL_RGB, OPS, Plan, apply_pil, draw_plan, pil_op, randaugment_batch,
                                 tensor_op)
from fakedata import make_cifar, make_idx
from helper.errors import ConfigError
from helper.loops import to_batch

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mlkd_randaugment.json")
NAMES = [name for name, _, _ in OPS]
LOADERS = ("tensor", "torch")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W[, C]) uint8 -> (1, C, H, W)."""
    return torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)[None].contiguous()


def to_array(t: torch.Tensor) -> np.ndarray:
    a = t.permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


def one_plan(ops, mags, cut) -> Plan:
    return Plan(torch.tensor([ops]), torch.tensor([mags], dtype=torch.float64),
                torch.tensor([cut], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ ops
@pytest.fixture(scope="module")
def mlkd():
    with open(FIXTURE) as f:
        d = json.load(f)

    def arr(s, shape=d["shape"]):
        return np.frombuffer(base64.b64decode(s), np.uint8).reshape(shape).copy()

    return d, arr


def test_each_op_reproduces_mlkd(mlkd):
    """Every op at two magnitudes on a 10x10 image; on a 32x32 one Equalize (which leaves images of under
    255 pixels alone) and rotate/shear magnitudes where Pillow's fixed-point map is not the exact one."""
    d, arr = mlkd
    assert {c["op"] for c in d["ops"]} == set(NAMES)
    large = d["large"]
    for img, cases in ((arr(d["image"]), d["ops"]), (arr(large["image"], large["shape"]), large["ops"])):
        for case in cases:
            k, want = NAMES.index(case["op"]), arr(case["out"], img.shape)
            assert np.array_equal(np.asarray(pil_op(Image.fromarray(img), k, case["v"])), want), case["op"]
            got = tensor_op(to_tensor(img), k, torch.tensor([case["v"]], dtype=torch.float64))[0]
            assert np.array_equal(to_array(got), want), case["op"]


def test_randaugment_reproduces_mlkd_calls_from_their_draws(mlkd):
    """MLKD's RandAugment(2, 10) given the draws it made: the same image from both implementations."""
    d, arr = mlkd
    img = arr(d["image"])
    h, w, _ = img.shape
    cases = d["randaugment"]
    plans = [one_plan([NAMES.index(n) for n in c["ops"]], c["v"], [c["cutout_v"] * w] + c["centre"])
             for c in cases]
    for c, plan in zip(cases, plans):
        assert np.array_equal(np.asarray(apply_pil(Image.fromarray(img), plan[0])), arr(c["out"]))
    batch = Plan(*(torch.cat([getattr(p, f) for p in plans]) for f in ("ops", "mags", "cut")))
    out = randaugment_batch(to_tensor(img).expand(len(cases), -1, -1, -1), batch, FILL_RGB)
    for c, o in zip(cases, out):
        assert np.array_equal(to_array(o), arr(c["out"]))


def _images():
    rng = np.random.default_rng(7)
    out = []
    for mode, ch in (("RGB", (3,)), ("L", ())):
        for h, w in ((12, 12), (9, 14)):
            out += [rng.integers(0, 256, (h, w) + ch, dtype=np.uint8),  # full range
                    rng.integers(70, 130, (h, w) + ch, dtype=np.uint8),  # low contrast
                    (rng.integers(0, 3, (h, w) + ch) * 100 + 7).astype(np.uint8)]  # three levels
        out.append(np.full((8, 8) + ch, 77, np.uint8))  # constant: autocontrast/equalize leave it
        out.append((rng.random((32, 30) + ch) ** 3 * 255).astype(np.uint8))  # skewed, large enough to equalize
    return out


@pytest.mark.parametrize("name", NAMES)
def test_tensor_op_equals_pil_op(name):
    k, (_, lo, hi) = NAMES.index(name), OPS[NAMES.index(name)]
    for img in _images():
        for t in (0.0, 0.31, 0.77, 0.999):
            v = lo + (hi - lo) * t
            want = np.asarray(pil_op(Image.fromarray(img), k, v))
            got = to_array(tensor_op(to_tensor(img), k, torch.tensor([v], dtype=torch.float64))[0])
            assert np.array_equal(got, want), (name, img.shape, v, np.argwhere(got != want)[:3].tolist())


def test_cutout_follows_mlkds_rectangle_and_fills():
    """Side s from the left/top corner int(max(0, c - s/2)) to int(min(W, x0 + s)) inclusive, clipped."""
    img = np.zeros((10, 12, 3), np.uint8)
    identity = NAMES.index("Identity")
    for s, cx, cy, cols, rows in ((3.0, 5.7, 2.2, (4, 7), (0, 3)), (5.9, 11.5, 9.9, (8, 11), (6, 9))):
        plan = one_plan([identity, identity], [0.5, 0.5], [s, cx, cy])
        want = np.zeros_like(img)
        want[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = FILL_RGB
        assert np.array_equal(np.asarray(apply_pil(Image.fromarray(img), plan[0])), want)
        assert np.array_equal(to_array(randaugment_batch(to_tensor(img), plan, FILL_RGB)[0]), want)
    assert Image.new("RGB", (1, 1), FILL_RGB).convert("L").getpixel((0, 0)) == FILL_GREY
    grey = apply_pil(Image.fromarray(img[..., 0]), one_plan([identity] * 2, [0, 0], [3.0, 5.7, 2.2])[0])
    assert np.asarray(grey)[0, 4] == FILL_GREY


# ------------------------------------------------------------------------------------------ draws
def test_plan_draws_follow_mlkd():
    n, h, w = 28000, 32, 40
    plan = draw_plan(n, h, w, torch.Generator().manual_seed(0))
    counts = torch.bincount(plan.ops.flatten(), minlength=len(OPS)).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 14 ops
    same = (plan.ops[:, 0] == plan.ops[:, 1]).double().mean().item()
    assert abs(same - 1 / 14) < 0.01  # with replacement
    for k, (name, lo, hi) in enumerate(OPS):
        v = plan.mags[plan.ops == k].numpy()
        assert v.min() >= lo and v.max() < hi, name
        assert stats.kstest((v - lo) / (hi - lo), "uniform").pvalue > 1e-3, name
    s, cx, cy = plan.cut.unbind(1)
    assert s.min() >= 0 and s.max() < w / 2 and stats.kstest(s.numpy() / (w / 2), "uniform").pvalue > 1e-3
    assert cx.min() > 1 and cx.max() <= w and cy.min() > 1 and cy.max() <= h  # numpy's uniform(W): (1, W]
    assert stats.kstest((cx.numpy() - 1) / (w - 1), "uniform").pvalue > 1e-3


def test_each_sample_gets_its_own_plan():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)).expand(96, -1, -1, -1).contiguous()
    plan = draw_plan(96, 16, 16, torch.Generator().manual_seed(3))
    out = randaugment_batch(x, plan, FILL_RGB)
    assert len({o.numpy().tobytes() for o in out}) > 90
    for i in range(0, 96, 7):
        alone = randaugment_batch(x[i:i + 1], plan[i:i + 1], FILL_RGB)[0]
        assert torch.equal(out[i], alone)
        assert np.array_equal(np.asarray(apply_pil(Image.fromarray(to_array(x[i])), plan[i])), to_array(out[i]))


# ------------------------------------------------------------------------------------------ loaders
def make_opt(**kw):
    base = dict(dataset="cifar10", data_folder="./data", batch_size=32, num_workers=0, seed=0, train_subset=0,
                download=False, loader="tensor", drop_last=False, nce_k=8, mode="exact", strong_aug="none")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Random images with values up to 100, so that an unaugmented pixel never has a Cutout colour."""
    base = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 101, (96, 32, 32, 3), dtype=np.uint8)
    grey = rng.integers(0, 101, (96, 28, 28), dtype=np.uint8)
    return {"cifar10": make_cifar(base / "c10", "cifar10", train_images=rgb, n_test=40, seed=0),
            "fashionmnist": make_idx(base / "fm", train_images=grey, n_test=40, seed=1)}


def epoch(bundle, e):
    bundle.set_epoch(e)
    return list(bundle.train_loader)


@pytest.mark.parametrize("loader", LOADERS)
def test_weak_view_is_bitwise_unchanged_by_the_strong_view(roots, loader):
    opt = make_opt(data_folder=roots["cifar10"], loader=loader)
    plain = get_dataloaders(opt, (3, 32, 32), contrast=True)
    two = get_dataloaders(make_opt(**{**vars(opt), "strong_aug": "randaugment"}), (3, 32, 32), contrast=True)
    a, b = epoch(plain, 2), epoch(two, 2)
    assert len(a) == len(b) == 3
    for (x, y, i, c), ((w, s), y2, i2, c2) in zip(a, b):
        assert torch.equal(x, w) and torch.equal(y, y2) and torch.equal(i, i2) and torch.equal(c, c2)
        assert s.shape == w.shape and s.dtype == w.dtype
        assert (s != w).flatten(1).any(1).all()
    for (x, y), (x2, y2) in zip(plain.val_loader, two.val_loader):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(torch.cat(list(plain.plain_train_images(50))), torch.cat(list(two.plain_train_images(50))))


@pytest.mark.parametrize("loader", LOADERS)
def test_strong_view_is_a_function_of_seed_and_epoch(roots, loader):
    opt = make_opt(data_folder=roots["cifar10"], loader=loader, strong_aug="randaugment")

    def strong(o, e):
        return torch.cat([x[0][1] for x in epoch(get_dataloaders(o, (3, 32, 32)), e)])

    first = strong(opt, 3)
    assert torch.equal(first, strong(opt, 3))
    assert not torch.equal(first, strong(opt, 4))
    assert not torch.equal(first, strong(make_opt(**{**vars(opt), "seed": 1}), 3))
    if loader == "torch":  # seeded per sample: the same in DataLoader workers
        assert torch.equal(first, strong(make_opt(**{**vars(opt), "num_workers": 2}), 3))


@pytest.mark.parametrize("loader", LOADERS)
def test_strong_crop_flip_is_drawn_independently(roots, loader, monkeypatch):
    """With RandAugment + Cutout switched off, the strong view is its own crop/flip: rarely the weak one's."""
    import dataset.randaugment as ra
    monkeypatch.setattr(ra, "apply_pil", lambda img, plan: img)
    monkeypatch.setattr(ra, "randaugment_batch", lambda x, plan, fill: x)
    opt = make_opt(data_folder=roots["cifar10"], loader=loader, strong_aug="randaugment", batch_size=96)
    (weak, strong), _, _ = epoch(get_dataloaders(opt, (3, 32, 32)), 1)[0]
    same = (weak == strong).flatten(1).all(1).double().mean().item()
    assert same < 0.1  # 81 offsets x 2 flips: 1/162 by chance


def _denorm(x, name):
    spec = DATASETS[name]
    reps = x.shape[1] // len(spec.mean)
    mean = torch.tensor(spec.mean * reps).view(1, -1, 1, 1)
    std = torch.tensor(spec.std * reps).view(1, -1, 1, 1)
    return (x * std * 255 + mean * 255).round().to(torch.int64)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name,shape", [("cifar10", (3, 32, 32)), ("fashionmnist", (3, 32, 32)),
                                        ("fashionmnist", (1, 28, 28))])
def test_both_loaders_cut_out_in_the_dataset_colour(roots, loader, name, shape):
    """Cutout runs last before the adaptation: the strong view holds its colour, the weak view does not."""
    opt = make_opt(dataset=name, data_folder=roots[name], loader=loader, strong_aug="randaugment", batch_size=96)
    (weak, strong), _, _ = epoch(get_dataloaders(opt, shape), 1)[0]
    fill = torch.tensor(FILL_RGB if name == "cifar10" else (FILL_GREY,) * shape[0]).view(1, -1, 1, 1)

    def share(x):  # samples with at least 2 pixels of exactly the fill colour
        return ((_denorm(x, name) == fill).all(1).flatten(1).sum(1) >= 2).double().mean().item()

    assert share(strong) > 0.9 and share(weak) < 0.1


def test_loader_tuple_through_to_batch(roots):
    for loader in LOADERS:
        opt = make_opt(data_folder=roots["cifar10"], loader=loader, strong_aug="randaugment")
        data = next(iter(get_dataloaders(opt, (3, 32, 32), contrast=True).train_loader))
        assert isinstance(data[0], tuple) and len(data[0]) == 2 and len(data) == 4
        batch = to_batch(data, "cpu")
        assert batch.images.shape == batch.images_strong.shape == (32, 3, 32, 32)
        assert batch.contrast_idx.shape == (32, 9) and torch.equal(batch.images_strong, data[0][1])
        plain = to_batch(next(iter(get_dataloaders(make_opt(data_folder=roots["cifar10"], loader=loader),
                                                   (3, 32, 32)).train_loader)), "cpu")
        assert plain.images_strong is None


def test_bad_strong_aug_is_a_config_error(roots):
    with pytest.raises(ConfigError, match="none or randaugment"):
        get_dataloaders(make_opt(data_folder=roots["cifar10"], strong_aug="autoaugment"), (3, 32, 32))
    with pytest.raises(ConfigError, match="--dali"):
        get_dataloaders(make_opt(data_folder=roots["cifar10"], strong_aug="randaugment", dali="cpu"), (3, 32, 32))


# ------------------------------------------------------------------------------------------ end to end
TINY = ["--dataset", "cifar100", "--batch_size", "16", "--print_freq", "0", "--num_workers", "0", "--epochs", "1"]


def test_train_student_with_the_strong_view(tmp_path):
    """Both loaders train with --strong_aug randaugment; the CE is summed over two views (about twice
    that of a run without the second view, from the same initialisation and order)."""
    data = make_cifar(str(tmp_path / "data"), "cifar100", n_train=48, n_test=16, seed=0)
    save = str(tmp_path / "save")
    train_teacher.main(["--model", "resnet8", "--data_folder", data, "--save_dir", save] + TINY)
    teacher = os.path.join(save, "teachers", "models", "resnet8_vanilla_cifar100_trial_0", "resnet8_best.pth")
    base = ["--path_t", teacher, "--model_s", "resnet8", "--data_folder", data, "--distill", "kd",
            "--skip-validation", "--learning_rate", "0.001"] + TINY
    cls = {}
    for loader in LOADERS:
        for aug in ("none", "randaugment"):
            out = str(tmp_path / f"{loader}_{aug}")
            train_student.main(base + ["--loader", loader, "--strong_aug", aug, "--save_dir", out])
            (metrics,) = [os.path.join(r, "metrics.jsonl") for r, _, f in os.walk(out) if "metrics.jsonl" in f]
            with open(metrics) as f:
                cls[loader, aug] = json.loads(f.readline())["loss_cls"]
    for loader in LOADERS:
        assert 1.7 < cls[loader, "randaugment"] / cls[loader, "none"] < 2.3, cls
