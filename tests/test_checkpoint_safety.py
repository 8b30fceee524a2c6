"""Loading a file never runs code: checkpoints (--path_t, --resume) go through torch.load(weights_only=True)
with a short allow-list, CIFAR's pickles through an unpickler that only builds arrays and containers.

Hostile files are built here so that unpickling them would create a marker file: refused with one line,
and the marker never appears (unless the user passes --trust_checkpoint for that file). Corrupt and
truncated files are one line each. The allow-list is minimal: each allowed type loads, the next type
one would be tempted to add (an int64 scalar, an ndarray) is refused.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re

import numpy as np
import pytest
import torch

import train_student
import train_teacher
from dataset.cifar import load_cifar
from fakedata import make_cifar
from helper.checkpoint import build_teacher, load_file
from helper.errors import ConfigError
from models import model_dict

EXEC = r"\b(builtins\.)?exec\b"  # how the refused global is named (torch prints builtins bare)
TINY = ["--dataset", "cifar100", "--batch_size", "16", "--print_freq", "0", "--num_workers", "0"]


class Hostile:
    """Unpickling this runs ``exec``, which creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def hostile_file(tmp_path, legacy=False, name="resnet8_vanilla_cifar100_trial_0/ckpt_epoch_240.pth"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "MARKER"
    sd = model_dict["resnet8"](num_classes=100).state_dict()
    torch.save({"model": sd, "epoch": 240, "x": Hostile(marker)}, str(path),
               _use_new_zipfile_serialization=not legacy)
    return str(path), marker


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_hostile_checkpoint_is_refused_and_never_runs(tmp_path, legacy):
    path, marker = hostile_file(tmp_path, legacy)
    with pytest.raises(ConfigError) as e:
        load_file(path)
    msg = one_line(e)
    assert re.search(EXEC, msg) and "--trust_checkpoint" in msg and path in msg
    with pytest.raises(ConfigError, match=EXEC):
        build_teacher(path, 100)
    assert not marker.exists()


def test_trust_checkpoint_loads_the_file_fully_and_says_so(tmp_path):
    path, marker = hostile_file(tmp_path)
    with pytest.warns(UserWarning, match="--trust_checkpoint"):
        ckpt = load_file(path, trust=True)
    assert marker.exists()  # the user's explicit choice: the file's code ran
    assert "model" in ckpt


def test_train_student_refuses_a_hostile_teacher_in_one_line(tmp_path, capsys):
    path, marker = hostile_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_student.main(["--path_t", path, "--model_s", "resnet8", "--save_dir", str(tmp_path / "save"),
                            "--epochs", "1"] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--trust_checkpoint" in err[0]
    assert not marker.exists() and not (tmp_path / "save").exists()


def test_resume_refuses_a_hostile_file_in_one_line(tmp_path, capsys):
    data = make_cifar(str(tmp_path / "data"), "cifar100", n_train=32, n_test=16)
    path, marker = hostile_file(tmp_path, name="evil_last.pth")
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", "resnet8", "--data_folder", data, "--resume", path, "--epochs", "1",
                            "--save_dir", str(tmp_path / "save")] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and re.search(EXEC, err[0])
    assert not marker.exists()


def test_corrupt_truncated_and_foreign_files_are_one_line_each(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(5000)}}, str(good))
    blob = good.read_bytes()
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.randn(5000)}}, str(legacy), _use_new_zipfile_serialization=False)
    files = {"random.pth": np.random.default_rng(0).bytes(4096), "truncated.pth": blob[:len(blob) // 2],
             "truncated_legacy.pth": legacy.read_bytes()[:len(legacy.read_bytes()) // 2], "empty.pth": b"",
             "text.pth": b"not a checkpoint\n", "plain_pickle.pth": pickle.dumps({"a": 1}, protocol=5)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError) as e:
            load_file(str(tmp_path / name))
        assert "cannot be read" in one_line(e), name
    assert load_file(str(good))["model"]["w"].shape == (5000,)
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(str(tmp_path / "missing.pth"))


def _repdistiller_last(tmp_path, numpy_1_names: bool):
    """A RepDistiller-style file: ``opt`` (argparse.Namespace), the model, and an SGD state whose learning
    rate is a numpy float64 (``lr * rate ** np.sum(...)`` in RepDistiller's/mdistiller's adjust_learning_rate).
    ``numpy_1_names``: the pickle names numpy.core.multiarray, as files written under numpy 1.x do."""
    net = model_dict["resnet8"](num_classes=100)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    steps = np.sum(200 > np.asarray([150, 180, 210]))
    for g in opt.param_groups:
        g["lr"] = 0.05 * (0.1 ** steps)
    assert isinstance(opt.param_groups[0]["lr"], np.float64)
    obj = {"opt": argparse.Namespace(model="resnet8", lr_decay_epochs=[150, 180, 210], learning_rate=0.05),
           "model": net.state_dict(), "optimizer": opt.state_dict(), "accuracy": torch.tensor(70.5)}
    path = tmp_path / ("np1.pth" if numpy_1_names else "np2.pth")
    torch.save(obj, str(path), _use_new_zipfile_serialization=not numpy_1_names)
    if numpy_1_names:  # the legacy format keeps the pickle's text as is: rename the module as numpy 1 wrote it
        raw = path.read_bytes()
        assert b"numpy._core.multiarray" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return str(path), obj


@pytest.mark.parametrize("numpy_1_names", [False, True], ids=["numpy2", "numpy1"])
def test_repdistiller_files_with_options_and_numpy_learning_rates_load(tmp_path, numpy_1_names):
    path, obj = _repdistiller_last(tmp_path, numpy_1_names)
    ckpt = load_file(path)
    assert ckpt["opt"] == obj["opt"]
    lr = ckpt["optimizer"]["param_groups"][0]["lr"]
    assert isinstance(lr, np.float64) and lr == obj["optimizer"]["param_groups"][0]["lr"]
    folder = tmp_path / "resnet8_vanilla"
    folder.mkdir()
    os.replace(path, folder / "resnet8_last.pth")
    model, arch, _ = build_teacher(str(folder / "resnet8_last.pth"), 100)
    assert arch == "resnet8"


@pytest.mark.parametrize("value,refused", [(np.int64(3), "Int64DType"), (np.zeros(3), "numpy")],
                         ids=["int64_scalar", "ndarray"])
def test_the_allow_list_is_minimal(tmp_path, value, refused):
    path = str(tmp_path / "x.pth")
    torch.save({"model": {}, "x": value}, path)
    with pytest.raises(ConfigError, match=refused):
        load_file(path)


def test_cifar_data_files_are_unpickled_without_running_code(tmp_path):
    root = make_cifar(str(tmp_path), "cifar100", n_train=20, n_test=10)
    train, test = load_cifar("cifar100", root)  # numpy arrays, bytes and lists load
    assert train.images.shape == (20, 32, 32, 3) and test.targets.dtype == np.int64
    marker = tmp_path / "MARKER"
    with open(os.path.join(root, "cifar-100-python", "train"), "wb") as f:
        pickle.dump({b"data": Hostile(marker), b"fine_labels": [0]}, f, protocol=2)
    with pytest.raises(ConfigError) as e:
        load_cifar("cifar100", root)
    assert re.search(EXEC, one_line(e)) and "cifar-100-python" in str(e.value)
    assert not marker.exists()


def test_both_scripts_take_the_opt_in_flag():
    assert train_teacher.parse_option(["--model", "resnet8", "--trust_checkpoint"]).trust_checkpoint
    assert train_student.parse_option(["--path_t", "x.pth", "--trust_checkpoint"]).trust_checkpoint
    assert not train_student.parse_option(["--path_t", "x.pth"]).trust_checkpoint
