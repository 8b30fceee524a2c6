"""Own datasets (--dataset imagefolder, --dataset tinyimagenet) on image trees generated here: classes from
the folders, every loader (tensor, torch, DALI's CPU pipeline), the served size and the models that take
it, normalisation statistics measured (against a formula written here), cached outside the data folder,
or given; mdistiller's rotation; and each bad input (unreadable image, empty class folder, differing class
sets, a split that does not fit in memory) as one line with nothing written.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import train_student
import train_teacher
from dataset import imagefolder as own
from dataset.transforms import random_rotate, rotate
from fakedata import make_image_folder, make_tinyimagenet
from helper.errors import ConfigError
from models import model_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--batch_size", "8", "--print_freq", "0", "--num_workers", "0", "--epochs", "1"]
SIZES = [(40, 30), (50, 64), (32, 32), (90, 70)]  # own data comes in any size

try:
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except Exception:
    HAVE_DALI = False
LOADERS = [("tensor", None), ("torch", None)] + ([("auto", "cpu")] if HAVE_DALI else [])


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """The statistics cache goes to a temporary XDG_CACHE_HOME, never to the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def opt_of(**kw):
    base = dict(dataset="imagefolder", data_folder="./data", batch_size=8, num_workers=0, seed=0, loader="auto",
                dali=None, image_size=None, mean=None, std=None)
    base.update(kw)
    return SimpleNamespace(**base)


def class_coloured_tree(root, splits=("train", "val"), n_classes=3, n=4, sizes=SIZES):
    """ImageFolder tree whose class c images are the constant colour (40 c + 20, 255 - 40 c, 60 + 30 c)."""
    for split in splits:
        for c in range(n_classes):
            d = os.path.join(root, split, f"c{c}")
            os.makedirs(d)
            for k in range(n):
                h, w = sizes[k % len(sizes)]
                Image.new("RGB", (w, h), (40 * c + 20, 255 - 40 * c, 60 + 30 * c)).save(os.path.join(d, f"{k}.png"))
    return str(root)


def snapshot(folder):
    return sorted((os.path.relpath(os.path.join(r, f), folder), os.stat(os.path.join(r, f)).st_mtime_ns)
                  for r, _, fs in os.walk(folder) for f in fs)


def denorm(x, bundle_spec):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in bundle_spec)
    return (x.cpu() * std + mean) * 255


# ---- imagefolder ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("loader,dali", LOADERS, ids=[d or l for l, d in LOADERS])
def test_imagefolder_through_every_loader(tmp_path, loader, dali):
    root = class_coloured_tree(tmp_path / "data")
    opt = opt_of(data_folder=root, loader=loader, dali=dali, num_workers=1 if dali else 0)
    assert dataset.num_classes(opt) == 3
    b = dataset.get_dataloaders(opt, (3, 32, 32))
    assert (b.loader, b.n_train, b.n_val, b.num_classes, b.input_shape) == (dali and "dali" or loader, 12, 12, 3,
                                                                             (3, 32, 32))
    spec = own.build_spec(opt, (3, 32, 32))
    b.set_epoch(0)
    for x, y, idx in b.train_loader:
        assert x.shape[1:] == (3, 32, 32) and torch.equal(b.train_targets[idx], y)
        centre = denorm(x, (spec.mean, spec.std))[:, :, 16, 16]  # never padding (crop offset <= 4)
        assert torch.allclose(centre[:, 0], 40 * y.float() + 20, atol=2)
    vx, vy = (torch.cat(t) for t in zip(*b.val_loader))
    assert sorted(vy.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.allclose(denorm(vx, (spec.mean, spec.std))[:, 1].mean((1, 2)), 255 - 40 * vy.float(), atol=2)


def test_the_loaders_serve_the_same_resized_images(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), ("train", "test"), n_classes=2, n_per_class=4, size=SIZES)
    vals = {}
    for loader, dali in LOADERS:
        b = dataset.get_dataloaders(opt_of(data_folder=root, loader=loader, dali=dali), (3, 32, 32))
        vals[b.loader] = torch.cat([v[0] for v in b.val_loader]).cpu()
    assert torch.allclose(vals["tensor"], vals["torch"], atol=1e-5)  # the same PIL resize
    if "dali" in vals:  # DALI's own resize kernel: close; 32x32 files (no resize) equal
        diff = (vals["dali"] - vals["torch"]).abs().mean((1, 2, 3))
        assert diff.max() < 0.05 and diff[2::4].max() < 1e-4


def test_statistics_are_measured_cached_outside_the_data_folder_or_given(tmp_path, cache_home, monkeypatch):
    root = make_image_folder(str(tmp_path / "data"), ("train", "val"), n_classes=2, n_per_class=5, size=SIZES,
                             seed=3)
    os.chmod(root, 0o555)  # a read-only data folder (root can still write: the snapshot checks it)
    before = snapshot(root)
    spec = own.build_spec(opt_of(data_folder=root, image_size=24), None)
    # independent formula: every training image (fewer than STATS_SAMPLE) resized by PIL, pixels in [0, 1]
    pix = np.concatenate([np.asarray(Image.open(os.path.join(dp, f)).convert("RGB").resize((24, 24), Image.BILINEAR),
                                     dtype=np.float64).reshape(-1, 3) / 255
                          for dp, _, fs in os.walk(os.path.join(root, "train")) for f in fs])
    assert np.allclose(spec.mean, pix.mean(0), atol=1e-5) and np.allclose(spec.std, pix.std(0), atol=1e-5)
    assert spec.shape == (3, 24, 24) and spec.crop_pad == 3 and spec.flip
    assert snapshot(root) == before
    cached = os.listdir(cache_home / "kd-codebase" / "folders")
    assert len(cached) == 1

    def no_measuring(*a, **k):
        raise AssertionError("the cached statistics must be used")
    with monkeypatch.context() as m:
        m.setattr(own, "measure_stats", no_measuring)
        m.setattr(own, "check_images", no_measuring)
        assert own.build_spec(opt_of(data_folder=root, image_size=24), None).mean == spec.mean
        given = own.build_spec(opt_of(data_folder=root, image_size=24, mean="0.5,0.4,0.3", std="0.2,0.2,0.25"),
                               None)
        assert (given.mean, given.std) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.25))
        assert own.build_spec(opt_of(data_folder=root, image_size=24), None).mean == spec.mean  # flags not cached
        with pytest.raises(ConfigError, match="--mean and --std go together"):
            own.build_spec(opt_of(data_folder=root, image_size=24, mean="0.5,0.4,0.3"), None)
        with pytest.raises(ConfigError, match="three comma-separated"):
            own.build_spec(opt_of(data_folder=root, image_size=24, mean="0.5", std="1,1,1"), None)
    os.chmod(root, 0o755)
    Image.new("RGB", (8, 8)).save(os.path.join(root, "train", "class000", "new.png"))  # another file list
    own.build_spec(opt_of(data_folder=root, image_size=24), None)
    assert len(os.listdir(cache_home / "kd-codebase" / "folders")) == 2


def test_served_size_and_the_models_that_take_it(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), ("train", "val"), n_classes=2, n_per_class=2, size=SIZES)
    opt = opt_of(data_folder=root)
    net = model_dict["resnet8"](num_classes=2)
    dataset.fit_models(opt, ("resnet8", net))  # default: the model's own size
    assert net.input_shape == (3, 32, 32)
    assert dataset.get_dataloaders(opt, net.input_shape).input_shape == (3, 32, 32)
    opt.image_size = 64
    flexible = model_dict["vgg8"](num_classes=2)
    dataset.fit_models(opt, ("vgg8", flexible))  # global pooling: takes 64x64, and now says so
    assert flexible.input_shape == (3, 64, 64) and model_dict["vgg8"](num_classes=2).input_shape == (3, 32, 32)
    b = dataset.get_dataloaders(opt, flexible.input_shape, device="cpu")
    assert next(iter(b.train_loader))[0].shape[1:] == (3, 64, 64)
    with pytest.raises(ConfigError) as e:
        dataset.fit_models(opt, ("vgg8", model_dict["vgg8"](num_classes=2)), ("resnet8", net))
    assert "resnet8" in str(e.value) and "--image_size 32" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="RGB"):
        dataset.fit_models(opt, ("cnn_mnist_student", model_dict["cnn_mnist_student"](num_classes=2)))
    opt.image_size = 224
    big = model_dict["ResNet18_imagenet"](num_classes=2)
    dataset.fit_models(opt, ("ResNet18_imagenet", big))
    assert big.input_shape == (3, 224, 224)
    assert dataset.get_dataloaders(opt, big.input_shape).input_shape == (3, 224, 224)


def test_a_split_that_does_not_fit_in_memory_goes_to_the_torch_loader(tmp_path, monkeypatch):
    root = make_image_folder(str(tmp_path / "data"), ("train", "val"), n_classes=2, n_per_class=3, size=32)
    monkeypatch.setattr(dataset, "memory_budget", lambda device: 2 * 12 * 3 * 32 * 32)  # both splits just fit
    assert dataset.get_dataloaders(opt_of(data_folder=root), (3, 32, 32)).loader == "tensor"
    monkeypatch.setattr(dataset, "memory_budget", lambda device: 12 * 3 * 32 * 32 - 1)
    assert dataset.get_dataloaders(opt_of(data_folder=root), (3, 32, 32)).loader == "torch"
    with pytest.raises(ConfigError) as e:
        dataset.get_dataloaders(opt_of(data_folder=root, loader="tensor"), (3, 32, 32))
    assert "--loader torch" in str(e.value) and "\n" not in str(e.value)


def run_fails(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "warnings.warn" not in ln]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("bad", ["unreadable", "zero_bytes", "truncated", "empty_class", "class_sets",
                                 "no_val", "tiny_unknown_wnid"])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, cache_home, bad):
    name = "tinyimagenet" if bad.startswith("tiny") else "imagefolder"
    if name == "tinyimagenet":
        root = make_tinyimagenet(str(tmp_path / "data"), n_classes=2, n_train=2, n_val=1)
        with open(os.path.join(root, "tiny-imagenet-200", "val", "val_annotations.txt"), "a") as f:
            f.write("val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    else:
        root = make_image_folder(str(tmp_path / "data"), ("train", "val"), n_classes=3, n_per_class=2, size=SIZES)
    target = os.path.join(root, "train", "class001", "img1.png")
    if bad == "unreadable":
        open(target, "wb").write(np.random.default_rng(0).bytes(300))
    elif bad == "zero_bytes":
        open(target, "wb").close()
    elif bad == "truncated":  # a header that reads, data that does not: caught when the tensor loader decodes
        blob = open(target, "rb").read()
        open(target, "wb").write(blob[:len(blob) // 2])
    elif bad == "empty_class":
        target = os.path.join(root, "val", "class002")
        for f in os.listdir(target):
            os.remove(os.path.join(target, f))
        open(os.path.join(target, "notes.txt"), "w").write("not an image")
    elif bad == "class_sets":
        os.rename(os.path.join(root, "val", "class002"), os.path.join(root, "val", "class009"))
    elif bad == "no_val":
        os.rename(os.path.join(root, "val"), os.path.join(root, "validation"))
    before = snapshot(root)
    save = tmp_path / "save"
    line = run_fails(train_teacher.main, ["--model", "resnet8", "--dataset", name, "--data_folder", root,
                                          "--image_size", "32", "--loader", "tensor", "--save_dir", str(save)] + TINY,
                     capsys)
    expect = {"unreadable": target, "zero_bytes": target, "truncated": target, "empty_class": target,
              "class_sets": "class002", "no_val": "val/", "tiny_unknown_wnid": "n99999999"}[bad]
    assert expect in line, line
    if bad == "class_sets":
        assert "class009" in line
    assert not save.exists() and snapshot(root) == before
    assert not cache_home.exists() or not any(fs for _, _, fs in os.walk(cache_home))


# ---- tinyimagenet ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("val_folders", [False, True], ids=["val_annotations", "val_class_folders"])
def test_tinyimagenet_layout_labels_and_statistics(tmp_path, val_folders):
    root = make_tinyimagenet(str(tmp_path / "data"), n_classes=3, n_train=3, n_val=2, val_folders=val_folders)
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = open(os.path.join(base, "wnids.txt")).read().split()
    opt = opt_of(dataset="tinyimagenet", data_folder=root)
    assert dataset.num_classes(opt) == 3
    classes, train, val, found = own.scan(opt)
    assert classes == sorted(wnids) and found == base and len(train) == 9 and len(val) == 6
    if not val_folders:  # every val image carries the class its annotation line gives
        ann = dict(line.split("\t")[:2] for line in open(os.path.join(base, "val", "val_annotations.txt")))
        assert all(classes[t] == ann[os.path.basename(p)] for p, t in val)
    spec = own.build_spec(opt, None)
    assert spec.shape == (3, 64, 64) and spec.num_classes == 3 and spec.rotate == 20 and spec.flip
    assert (spec.mean, spec.std) == ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))  # mdistiller's
    with pytest.raises(ConfigError, match="tiny-imagenet-200"):
        own.scan(opt_of(dataset="tinyimagenet", data_folder=str(tmp_path)))


@pytest.mark.parametrize("loader,dali", LOADERS, ids=[d or l for l, d in LOADERS])
def test_tinyimagenet_through_every_loader_rotates(tmp_path, loader, dali):
    root = make_tinyimagenet(str(tmp_path / "data"), n_classes=2, n_train=8, n_val=2)
    opt = opt_of(dataset="tinyimagenet", data_folder=root, loader=loader, dali=dali, batch_size=16,
                 num_workers=1 if dali else 0)
    b = dataset.get_dataloaders(opt, (3, 64, 64))
    b.set_epoch(0)
    x, y, idx = next(iter(b.train_loader))
    spec = own.build_spec(opt, None)
    raw = denorm(x, (spec.mean, spec.std))
    # a rotation by more than about a degree moves the corner pixel's source outside the image: zero fill
    # (P(|angle| < 1.3) = 6.5% per image); the un-augmented images (random noise) are never black there
    zero_corner = (raw[:, :, 0, 0].abs() < 1).all(1)
    assert x.shape == (16, 3, 64, 64) and zero_corner.sum() >= 10
    plain = denorm(torch.cat(list(b.plain_train_images(16))), (spec.mean, spec.std))
    assert not ((plain[:, :, 0, 0].abs() < 1).all(1)).any()


def test_rotation_is_torchvisions_rotate_with_uniform_angles():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for angle in (0.0, 7.0, -13.5, 20.0):
        assert torch.equal(rotate(x, torch.tensor([angle])),
                           TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST, fill=0))
    # the angles random_rotate draws: recover each from the rotation by k/2 degree its output matches best
    g = torch.Generator().manual_seed(1)
    x = x[:, :, :24, :24].contiguous()
    out = random_rotate(x.expand(300, -1, -1, -1).contiguous(), 20.0, g)
    grid = torch.arange(-40, 41) / 2.0
    refs = rotate(x.expand(len(grid), -1, -1, -1).contiguous(), grid)
    match = (out[:, None] == refs[None]).flatten(2).float().mean(2).argmax(1)
    angles = grid[match]
    from scipy import stats
    assert angles.abs().max() <= 20 and stats.kstest(angles.numpy(), "uniform", args=(-20, 40)).pvalue > 1e-3
    assert stats.kstest(np.clip(angles.numpy() * 2, -40, 40), "uniform", args=(-20, 40)).pvalue < 1e-6  # power


# ---- end to end, and the scripts --------------------------------------------------------------------------

def test_teacher_and_student_on_own_data_end_to_end(tmp_path):
    tiny = make_tinyimagenet(str(tmp_path / "tiny"), n_classes=3, n_train=4, n_val=2)
    save = str(tmp_path / "save")
    t = train_teacher.main(["--model", "resnet8", "--dataset", "tinyimagenet", "--data_folder", tiny,
                            "--image_size", "32", "--save_dir", save] + TINY)
    assert t["dataset"] == "tinyimagenet" and t["last_epoch"] == 1
    path_t = os.path.join(save, "teachers", "models", "resnet8_vanilla_tinyimagenet_trial_0", "resnet8_last.pth")
    s = train_student.main(["--path_t", path_t, "--model_s", "resnet8", "--dataset", "tinyimagenet",
                            "--data_folder", tiny, "--image_size", "32", "--loader", "torch", "--distill", "kd",
                            "--save_dir", save] + TINY)
    assert s["model_t"] == "resnet8" and s["teacher_acc"] is not None
    own_root = make_image_folder(str(tmp_path / "own"), ("train", "val"), n_classes=4, n_per_class=2, size=SIZES)
    with pytest.raises(SystemExit) as e:  # a teacher with another class count: one line, as for any dataset
        train_student.main(["--path_t", path_t, "--model_s", "resnet8", "--dataset", "imagefolder",
                            "--data_folder", own_root, "--save_dir", save] + TINY)
    assert e.value.code == 2


def test_tinyimagenet_script_runs_mdistillers_recipe(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "SAVE": str(tmp_path / "save"), "DATA": "/data", "TRIALS": "1",
           "METHODS": "kd cka_group"}
    for k in ("PAIRS", "EXTRA_ARGS", "ROLE", "TEACHER_PATH", "GPUS"):
        env.pop(k, None)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_tinyimagenet.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(ln) for ln in r.stdout.splitlines() if ln.startswith("python ")]
    teachers = [c for c in cmds if c[1] == "train_teacher.py"]
    students = [c for c in cmds if c[1] == "train_student.py"]
    assert len(teachers) == 3 and len(students) == 4  # ResNet18, ResNet34, vgg8; 2 pairs x 2 methods
    for c in teachers:
        opt = train_teacher.parse_option(c[2:])
        assert (opt.dataset, opt.data_folder, opt.batch_size, opt.epochs, opt.learning_rate, opt.lr_decay_epochs,
                opt.weight_decay, opt.momentum) == ("tinyimagenet", "/data", 256, 200, 0.2, [60, 120, 160], 5e-4, 0.9)
    kd = [train_student.parse_option(c[2:]) for c in students if "kd" in c[c.index("--distill") + 1]]
    assert {(o.model_t or o.path_t.split("/")[-2], o.model_s) for o in kd} >= {
        ("ResNet18_vanilla_tinyimagenet_trial_0", "vgg8"), ("ResNet34_vanilla_tinyimagenet_trial_0", "ResNet18")}
    assert all((o.cls, o.div, o.epochs, o.learning_rate) == (0.1, 0.9, 200, 0.2) for o in kd)
