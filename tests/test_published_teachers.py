"""Published teachers, offline: scripts/fetch_pretrained_teachers.sh on a cifar_teachers.tar built here in
the published layout (and hostile variants of it), torchvision teachers from a weight file placed in a
temporary TORCH_HOME under torchvision's own name, and the warning when a teacher's measured accuracy is
more than a point from the published one.
"""
from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

import train_student
from fakedata import make_cifar, make_image_folder
from helper.checkpoint import build_teacher
from helper.errors import ConfigError
from helper.pretrained import check_published_accuracy, published_accuracy, torchvision_weights
from models import model_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import fetch_teachers  # noqa: E402
TINY = ["--batch_size", "16", "--print_freq", "0", "--num_workers", "0", "--epochs", "1"]


def run_script(script, tmp_path, **env):
    full = {**os.environ, "SAVE": str(tmp_path / "save"), **{k: str(v) for k, v in env.items()}}
    for k in ("TEACHERS_TAR", "TEACHERS_URL", "TEACHER_PATH", "TEACHER", "METHODS", "PAIRS", "TRIALS"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def repdistiller_ckpt(arch: str, seed: int, num_classes: int = 100) -> tuple[dict, torch.nn.Module]:
    """A checkpoint as RepDistiller's train_teacher.py writes ckpt_epoch_240.pth: the weights, the epoch, the
    test accuracy as a tensor, and an SGD state whose lr is a numpy float64 after the step decays."""
    torch.manual_seed(seed)
    net = model_dict[arch](num_classes=num_classes)
    with torch.no_grad():
        net.train()
        net(torch.randn(4, 3, 32, 32))  # non-trivial BatchNorm statistics
    net.eval()
    sgd = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for g in sgd.param_groups:
        g["lr"] = 0.05 * 0.1 ** np.sum(240 > np.asarray([150, 180, 210]))
    return {"epoch": 240, "model": net.state_dict(), "accuracy": torch.tensor(71.0), "optimizer": sgd.state_dict()}, net


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def ckpt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def published_tar(tmp_path_factory):
    """cifar_teachers.tar in the published layout: two model_dict teachers and one unknown architecture."""
    d = tmp_path_factory.mktemp("tar")
    nets, blobs = {}, {}
    for seed, arch in enumerate(("resnet8", "resnet56")):
        ckpt, nets[arch] = repdistiller_ckpt(arch, seed)
        blobs[arch] = ckpt_bytes(ckpt)
    path = str(d / "cifar_teachers.tar")
    with tarfile.open(path, "w") as tar:
        for arch, blob in blobs.items():
            add_bytes(tar, f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth", blob)
        add_bytes(tar, "cifar_teachers/mynet_vanilla/ckpt_epoch_240.pth", blobs["resnet8"])
    return path, nets, blobs


def teacher_file(save, arch, name=None):
    return os.path.join(save, "teachers", "models", f"{arch}_vanilla_cifar100_trial_0", name or f"{arch}_last.pth")


def test_fetch_installs_the_published_layout_under_our_names(published_tar, tmp_path, capsys):
    tar, nets, blobs = published_tar
    r = run_script("fetch_pretrained_teachers.sh", tmp_path, TEACHERS_TAR=tar)
    assert r.returncode == 0, r.stderr
    save = str(tmp_path / "save")
    for arch, net in nets.items():
        last, epoch_file = teacher_file(save, arch), teacher_file(save, arch, "ckpt_epoch_240.pth")
        assert open(last, "rb").read() == blobs[arch] and open(epoch_file, "rb").read() == blobs[arch]
        model, got_arch, _ = build_teacher(last, 100)  # the architecture from the folder name, safe loader
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert got_arch == arch and torch.equal(model.eval()(x), net(x))
    assert "mynet" in r.stdout and not os.path.exists(teacher_file(save, "mynet"))
    assert sorted(os.listdir(os.path.join(save, "teachers", "models"))) == [
        "resnet56_vanilla_cifar100_trial_0", "resnet8_vanilla_cifar100_trial_0"]  # no staging left behind
    # run_cifar_distill.sh finds them without edits
    d = run_script("run_cifar_distill.sh", tmp_path, DRY_RUN=1, TRIALS=1, METHODS="kd", PAIRS="resnet56:resnet8")
    assert d.returncode == 0 and "not found" not in d.stdout
    cmd = shlex.split([ln for ln in d.stdout.splitlines() if "train_student.py" in ln][0])
    assert cmd[cmd.index("--path_t") + 1] == teacher_file(save, "resnet56")
    # a second run changes nothing; a folder holding the user's own run is left alone
    own = teacher_file(save, "resnet8")
    with open(own, "wb") as f:
        f.write(ckpt_bytes(repdistiller_ckpt("resnet8", 99)[0]))
    mine = open(own, "rb").read()
    assert fetch_teachers.main(["--tar", tar, "--save_dir", save]) == 0
    assert "kept" in capsys.readouterr().out and open(own, "rb").read() == mine


def test_fetch_downloads_from_the_url_once(published_tar, tmp_path, capsys):
    tar, _, blobs = published_tar
    r = run_script("fetch_pretrained_teachers.sh", tmp_path, TEACHERS_URL="file://" + tar)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "save" / "teachers" / "cifar_teachers.tar")
    assert open(teacher_file(str(tmp_path / "save"), "resnet56"), "rb").read() == blobs["resnet56"]
    assert fetch_teachers.main(["--url", "file:///nonexistent/x.tar", "--save_dir", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TEACHERS_TAR=" in err[0] and "nonexistent" in err[0]


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "wrong_classes", "hostile", "corrupt",
                                  "not_a_tar"])
def test_fetch_refuses_a_bad_archive_in_one_line_and_writes_nothing(published_tar, tmp_path, kind, capsys):
    _, _, blobs = published_tar
    path = str(tmp_path / "cifar_teachers.tar")
    marker = tmp_path / "MARKER"
    if kind == "not_a_tar":
        open(path, "wb").write(b"\x00garbage" * 100)
    else:
        with tarfile.open(path, "w") as tar:
            add_bytes(tar, "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth", blobs["resnet56"])
            if kind == "traversal":
                add_bytes(tar, "cifar_teachers/../../resnet8_vanilla/ckpt_epoch_240.pth", blobs["resnet8"])
            elif kind == "absolute":
                add_bytes(tar, str(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"), blobs["resnet8"])
            elif kind == "symlink":
                info = tarfile.TarInfo("cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            elif kind == "wrong_classes":
                add_bytes(tar, "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth",
                          ckpt_bytes(repdistiller_ckpt("resnet8", 0, num_classes=10)[0]))
            elif kind == "hostile":
                from test_checkpoint_safety import Hostile
                add_bytes(tar, "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth",
                          ckpt_bytes({"model": {}, "x": Hostile(marker)}))
            elif kind == "corrupt":
                add_bytes(tar, "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth", blobs["resnet8"][:5000])
    assert fetch_teachers.main(["--tar", path, "--save_dir", str(tmp_path / "save")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    expect = {"traversal": "outside", "absolute": "outside", "symlink": "link", "wrong_classes": "100 classes",
              "hostile": "--trust_checkpoint", "corrupt": "cannot be read", "not_a_tar": "not a readable tar"}[kind]
    assert expect in err[0]
    models = tmp_path / "save" / "teachers" / "models"
    assert not models.exists() or os.listdir(models) == []  # not even resnet56, which was fine
    assert not marker.exists() and not (tmp_path / "resnet8_vanilla").exists()


# ---- torchvision teachers -------------------------------------------------------------------------------

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def place_torchvision_file(torch_home, name="resnet18"):
    """A ResNet18_imagenet state_dict where torchvision's cache keeps resnet18's IMAGENET1K_V1 weights."""
    weights, arch = torchvision_weights(name)
    torch.manual_seed(0)
    net = model_dict[arch]().eval()
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), str(path))
    return net, str(path)


def test_torchvision_teacher_loads_from_the_cache_without_network(torch_home, monkeypatch):
    net, path = place_torchvision_file(torch_home)
    assert path.endswith(os.path.join("hub", "checkpoints", "resnet18-f37072fd.pth"))

    def no_network(*a, **k):
        raise AssertionError("the cached file must be used")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model, arch, _ = build_teacher("torchvision:resnet18", 1000)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert arch == "ResNet18_imagenet" and torch.equal(model.eval()(x), net(x))
    with pytest.raises(ConfigError, match="contradicts"):
        build_teacher("torchvision:resnet18", 1000, "ResNet34_imagenet")


def test_torchvision_teacher_without_network_or_cache_says_what_to_put_where(torch_home, monkeypatch):
    from urllib.error import URLError

    def offline(url, dst, *a, **k):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as e:
        build_teacher("torchvision:resnet34", 1000)
    msg = str(e.value)
    assert "\n" not in msg and "https://download.pytorch.org/models/resnet34-b627a593.pth" in msg
    assert os.path.join(str(torch_home), "hub", "checkpoints", "resnet34-b627a593.pth") in msg
    for bad, what in (("torchvision:vgg16", "torchvision teachers are"), ("torchvision:resnet50.V9", "IMAGENET1K_V2")):
        with pytest.raises(ConfigError, match=what):
            build_teacher(bad, 1000)


def test_torchvision_download_goes_through_the_safe_loader(torch_home, monkeypatch, tmp_path):
    """A download lands in torchvision's cache and is read by the safe loader: a hostile file is refused."""
    from test_checkpoint_safety import Hostile
    marker = tmp_path / "MARKER"

    def fake_download(url, dst, hash_prefix=None, progress=True):
        assert url.endswith("resnet18-f37072fd.pth") and hash_prefix == "f37072fd"
        torch.save({"x": Hostile(marker)}, dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(ConfigError, match="--trust_checkpoint"):
        build_teacher("torchvision:resnet18", 1000)
    assert not marker.exists() and os.path.isfile(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")


def test_imagenet_script_defaults_to_the_torchvision_teacher(tmp_path):
    r = run_script("run_imagenet_distill.sh", tmp_path, DRY_RUN=1, METHODS="kd", GPUS_PER_NODE=8)
    assert r.returncode == 0, r.stderr
    cmd = shlex.split([ln for ln in r.stdout.splitlines() if "train_student.py" in ln][0])
    opt = train_student.parse_option(cmd[cmd.index("train_student.py") + 1:])
    assert (opt.path_t, opt.model_t) == ("torchvision:resnet34", "ResNet34_imagenet")
    r = run_script("run_imagenet_distill.sh", tmp_path, DRY_RUN=1, METHODS="teacher kd", GPUS_PER_NODE=8)
    assert "ResNet34_imagenet_vanilla_imagenet_trial_0/ResNet34_imagenet_last.pth" in r.stdout


# ---- the published-accuracy check ------------------------------------------------------------------------

def test_published_accuracies_come_from_the_tables_and_torchvision():
    # RepDistiller's Teacher row (README) and torchvision's model docs, typed here independently
    assert published_accuracy(None, "resnet32x4", "cifar100")[0] == 79.42
    assert published_accuracy("x/wrn_40_2.pth", "wrn_40_2", "cifar100")[0] == 75.61
    assert published_accuracy("torchvision:resnet34", "ResNet34_imagenet", "imagenet")[0] == 73.314
    assert published_accuracy("torchvision:resnet50.IMAGENET1K_V2", "ResNet50_imagenet", "imagenet")[0] == 80.858
    assert published_accuracy("mine.pth", "ResNet50_imagenet", "imagenet")[0] == 76.13
    assert published_accuracy(None, "resnet8", "cifar100") is None
    assert published_accuracy(None, "resnet32x4", "cifar10") is None


def test_the_check_warns_beyond_one_point_only():
    lines = []
    assert check_published_accuracy("t.pth", "resnet56", "cifar100", 71.40, lines.append) == 72.34
    assert lines == []  # 0.94 points: within
    check_published_accuracy("t.pth", "resnet56", "cifar100", 71.30, lines.append)
    assert len(lines) == 1 and "t.pth" in lines[0] and "71.30" in lines[0] and "72.34" in lines[0]
    assert "-1.04" in lines[0]
    assert check_published_accuracy("t.pth", "resnet8", "cifar100", 10.0, lines.append) is None
    assert check_published_accuracy("t.pth", "resnet56", "cifar100", None, lines.append) is None and len(lines) == 1


def test_train_student_warns_about_a_teacher_far_from_its_published_accuracy(published_tar, tmp_path, capsys):
    tar, _, _ = published_tar
    assert run_script("fetch_pretrained_teachers.sh", tmp_path, TEACHERS_TAR=tar).returncode == 0
    data = make_cifar(str(tmp_path / "data"), "cifar100", n_train=32, n_test=16)
    path = teacher_file(str(tmp_path / "save"), "resnet56")
    train_student.main(["--path_t", path, "--model_s", "resnet8", "--dataset", "cifar100", "--data_folder", data,
                        "--save_dir", str(tmp_path / "save")] + TINY)
    out = capsys.readouterr().out
    warn = [ln for ln in out.splitlines() if ln.startswith("warning: teacher")]
    assert len(warn) == 1 and path in warn[0] and "72.34" in warn[0], out


def test_train_student_with_a_torchvision_teacher(torch_home, tmp_path, capsys):
    place_torchvision_file(torch_home)
    data = make_image_folder(str(tmp_path / "imagenet"), splits=("train", "val"), n_classes=2, n_per_class=1,
                             size=(240, 256))
    summary = train_student.main(["--path_t", "torchvision:resnet18", "--model_s", "ResNet18_imagenet",
                                  "--dataset", "imagenet", "--data_folder", data, "--save_dir", str(tmp_path / "s"),
                                  "--batch_size", "2", "--print_freq", "0", "--num_workers", "0", "--epochs", "1",
                                  "--skip_save"])
    assert summary["model_t"] == "ResNet18_imagenet"
    assert "published 69.76 (torchvision ResNet18_Weights.IMAGENET1K_V1)" in capsys.readouterr().out
