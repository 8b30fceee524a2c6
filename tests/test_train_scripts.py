"""End to end: train_teacher.py and train_student.py on tiny CIFAR-100 folders in the real pickle format.

Every --distill name trains one short epoch, saves a checkpoint and resumes from it; resume is exact;
bad input is one line on stderr with exit code 2 and loses nothing already saved; teacher checkpoints in
RepDistiller's and DataParallel's formats load.
"""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import train_student
import train_teacher
from distiller_zoo import DISTILLERS
from fakedata import make_cifar
from helper.checkpoint import arch_from_path, atomic_save, build_teacher, load_file
from helper.errors import ConfigError
from models import model_dict

TINY = ["--dataset", "cifar100", "--batch_size", "16", "--print_freq", "0", "--num_workers", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar(str(root), "cifar100", n_train=64, n_test=32, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def teacher_ckpt(data_dir, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("save"))
    train_teacher.main(["--model", "resnet14", "--data_folder", data_dir, "--epochs", "1", "--save_dir", save]
                       + TINY)
    path = os.path.join(save, "teachers", "models", "resnet14_vanilla_cifar100_trial_0", "resnet14_best.pth")
    assert os.path.isfile(path)
    return path


def run_ok(main, argv):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), f"exited with {e.code}"


def run_fails(main, argv, capsys) -> str:
    """The run must stop with exit code 2 and exactly one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if not ln.startswith("  warnings.warn")]  # not ours
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def student_folder(save, s, t, distill, cls, div, beta, trial="1", dataset="cifar100"):
    sep = ":" if os.name != "nt" else "~"
    return os.path.join(save, "students", "models",
                        f"S{sep}{s}_T{sep}{t}_{dataset}_{distill}_r{sep}{cls}_a{sep}{div}_b{sep}{beta}_{trial}")


# ------------------------------------------------------------------------------------------ teacher

def test_teacher_run_writes_checkpoints_metrics_and_tensorboard(data_dir, tmp_path):
    save = str(tmp_path)
    run_ok(train_teacher.main, ["--model", "resnet8", "--data_folder", data_dir, "--epochs", "2",
                                "--save_freq", "1", "--save_dir", save] + TINY)
    folder = os.path.join(save, "teachers", "models", "resnet8_vanilla_cifar100_trial_0")
    for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "resnet8_best.pth", "resnet8_last.pth",
                 "summary.json", "parameters.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(folder, name)), name
    ckpt = load_file(os.path.join(folder, "resnet8_last.pth"))  # weights_only=True must work
    for key in ("model", "epoch", "best_acc", "optimizer", "rng", "opt", "arch"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet8"
    assert not any(k.startswith("module.") for k in ckpt["model"])
    lines = [json.loads(x) for x in open(os.path.join(folder, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == [1, 2] and all(0 <= r["test_acc"] <= 100 for r in lines)
    events = glob.glob(os.path.join(save, "teachers", "tensorboard", "resnet8_vanilla_cifar100_trial_0", "events*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(events[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc1", "test/acc1", "test/acc5", "train/lr"} <= tags, tags


def _weights(path):
    return load_file(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"differ: {diff[:5]}"


def test_teacher_resume_is_exact(data_dir, tmp_path):
    base = ["--model", "resnet8", "--data_folder", data_dir, "--deterministic", "--lr_decay_epochs", "1",
            "--save_freq", "0"] + TINY
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    run_ok(train_teacher.main, base + ["--epochs", "2", "--save_dir", one])
    run_ok(train_teacher.main, base + ["--epochs", "1", "--save_dir", two])
    last = os.path.join(two, "teachers", "models", "resnet8_vanilla_cifar100_trial_0", "resnet8_last.pth")
    run_ok(train_teacher.main, base + ["--epochs", "2", "--save_dir", two, "--resume", last])
    _assert_same_weights(
        _weights(os.path.join(one, "teachers", "models", "resnet8_vanilla_cifar100_trial_0", "resnet8_last.pth")),
        _weights(last))
    lines = [json.loads(x) for x in open(os.path.join(os.path.dirname(last), "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == [1, 2]


# ------------------------------------------------------------------------------------------ students

SEP_ = ":" if os.name != "nt" else "~"


def folder_of(argv) -> str:
    """The run folder train_student.py names for ``argv`` (loop options tag the method: dkd+LS+DOT, mlkd+RA)."""
    opt = train_student.parse_option(argv)
    train_student.name_run(opt, "resnet14")
    return opt.save_folder


# -b 1 for every method but CC, whose unnormalised embedding correlation diverges at 1 on these tiny random
# models (NaN in epoch 2: the loop then stops the run); 0.02 is its published weight
BETA = {"correlation": "0.02"}


def _beta(name):
    return "0" if not DISTILLERS[name].has_loss else BETA.get(name, "1")


def _method_args(name):
    args = ["--distill", name, "-c", "1", "-d", "1", "-b", _beta(name),
            "--nce_k", "32", "--init_epochs", "1", "--cka_images", "32"]
    return args


@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_every_method_trains_saves_and_resumes(name, data_dir, teacher_ckpt, tmp_path):
    save = str(tmp_path)
    argv = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save,
            "--skip-validation"] + TINY + _method_args(name)
    run_ok(train_student.main, argv + ["--epochs", "1"])
    folder = folder_of(argv)
    assert os.path.basename(folder).startswith(f"S{SEP_}resnet8_T{SEP_}resnet14_cifar100_{name}")
    last = os.path.join(folder, "resnet8_last.pth")
    ckpt = load_file(last)
    assert ckpt["epoch"] == 1 and ckpt["distill"] == name and ckpt["teacher_arch"] == "resnet14"
    assert ckpt["distiller"] is not None
    run_ok(train_student.main, argv + ["--epochs", "2", "--resume", last])
    assert load_file(last)["epoch"] == 2
    summary = json.load(open(os.path.join(folder, "summary.json")))
    assert summary["last_epoch"] == 2 and summary["distill"] == name


# extra flags per resume case: ctkd's learned temperature and per-epoch curriculum (a 2-epoch one, so that
# lambda changes across the resume point); dkd with its beta warm-up default, logit standardisation and DOT's
# two momentum buffers in the optimizer state
RESUME = {"kd": [], "crd": [], "cka_group": [], "hint": [], "ctkd": ["--ctkd_loops", "2"],
          "dkd": ["--logit_stand", "--optimizer", "dot"], "reviewkd": [], "ofd": [], "rcka": []}


@pytest.mark.parametrize("name", list(RESUME))
def test_student_resume_is_exact(name, data_dir, teacher_ckpt, tmp_path):
    base = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--deterministic",
            "--lr_decay_epochs", "1", "--skip-validation"] + TINY + _method_args(name) + RESUME[name]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_ok(train_student.main, base + ["--epochs", "2", "--save_dir", one])
    run_ok(train_student.main, base + ["--epochs", "1", "--save_dir", two])
    rel = os.path.relpath(folder_of(base + ["--save_dir", two]), two)
    last2 = os.path.join(two, rel, "resnet8_last.pth")
    run_ok(train_student.main, base + ["--epochs", "2", "--save_dir", two, "--resume", last2])
    a, b = load_file(os.path.join(one, rel, "resnet8_last.pth")), load_file(last2)
    _assert_same_weights(a["model"], b["model"])
    for k, v in a["distiller"].items():
        if torch.is_tensor(v):
            assert torch.equal(v, b["distiller"][k]), k


def test_cka_group_writes_its_grouping_and_reuses_it_on_resume(data_dir, teacher_ckpt, tmp_path, capsys):
    save = str(tmp_path)
    argv = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save,
            "--skip-validation", "--distill", "cka_group", "-b", "1", "--cka_images", "32",
            "--cka_groups", "2"] + TINY
    run_ok(train_student.main, argv + ["--epochs", "1"])
    folder = student_folder(save, "resnet8", "resnet14", "cka_group", "1.0", "1.0", "1.0")
    g = json.load(open(os.path.join(folder, "cka_grouping.json")))
    L_t = len(model_dict["resnet14"](num_classes=100).layer_names())
    assert g["n_groups"] == 2 and g["teacher_ends"][-1] == L_t and g["student_ends"] == [3, 5]
    assert len(g["teacher_cka"]) == L_t and abs(g["teacher_cka"][0][0] - 1) < 1e-4
    assert "computed" in capsys.readouterr().out
    run_ok(train_student.main, argv + ["--epochs", "2", "--resume", os.path.join(folder, "resnet8_last.pth")])
    assert "restored from the checkpoint" in capsys.readouterr().out
    assert json.load(open(os.path.join(folder, "cka_grouping.json"))) == g


def test_self_and_online_modes_train(data_dir, teacher_ckpt, tmp_path):
    save = str(tmp_path)
    common = ["--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save, "--epochs", "1"] + TINY
    run_ok(train_student.main, common + ["--kd_mode", "self", "--distill", "kd"])
    run_ok(train_student.main, common + ["--kd_mode", "online", "--model_t", "resnet8", "--distill", "kd"])
    sep = ":" if os.name != "nt" else "~"
    for mode, t in (("self", "resnet8"), ("online", "resnet8")):
        folder = os.path.join(save, "students", "models",
                              f"S{sep}resnet8_T{sep}{t}_cifar100_kd-{mode}_r{sep}1.0_a{sep}1.0_b{sep}0.0_1")
        ckpt = load_file(os.path.join(folder, "resnet8_last.pth"))
        assert ckpt["teacher"] is not None  # the EMA / peer weights travel with the student


# ------------------------------------------------------------------------------------------ bad input

def test_bad_input_is_one_line_and_exit_2(data_dir, teacher_ckpt, tmp_path, capsys):
    save = str(tmp_path)
    base = ["--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save] + TINY
    assert "--path_t" in run_fails(train_student.main, base, capsys)
    assert "resnet999" in run_fails(train_student.main, base + ["--path_t", teacher_ckpt, "--model_s", "resnet999"],
                                    capsys)
    assert "-b" in run_fails(train_student.main, base + ["--path_t", teacher_ckpt, "--distill", "attention"], capsys)
    assert "nope" in run_fails(train_student.main, base + ["--path_t", teacher_ckpt, "--distill", "nope"], capsys)
    assert "-d" in run_fails(train_student.main, base + ["--path_t", teacher_ckpt, "--distill", "ctkd", "-d", "0"],
                             capsys)   # a learned KD temperature without a KD term
    assert "does not exist" in run_fails(train_student.main, base + ["--path_t", str(tmp_path / "x.pth")], capsys)
    assert "no such file" in run_fails(train_student.main, base + ["--path_t", teacher_ckpt, "--resume",
                                                                    str(tmp_path / "r.pth")], capsys)
    msg = run_fails(train_teacher.main, ["--model", "resnet8", "--data_folder", str(tmp_path / "empty"),
                                         "--save_dir", save] + TINY, capsys)
    assert "cifar-100-python" in msg
    msg = run_fails(train_student.main, base[:-len(TINY)] + ["--dataset", "cifar10", "--batch_size", "16",
                                                             "--path_t", teacher_ckpt], capsys)
    assert "resnet14" in msg or "classes" in msg  # a 100-class teacher on a 10-class dataset


def test_failed_run_loses_nothing_already_saved(data_dir, teacher_ckpt, tmp_path, capsys):
    save = str(tmp_path)
    argv = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save,
            "--epochs", "1", "--skip-validation"] + TINY
    run_ok(train_student.main, argv)
    folder = student_folder(save, "resnet8", "resnet14", "kd", "1.0", "1.0", "0.0")
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    run_fails(train_student.main, argv + ["--distill", "attention"], capsys)  # -b 0: refused
    assert {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)} == before


def test_a_diverging_run_stops_with_one_line_and_keeps_the_earlier_epochs(data_dir, teacher_ckpt, tmp_path, capsys):
    """A NaN/inf training loss ends the run at the end of that epoch (one line, exit 2), before anything of
    that epoch is saved: the checkpoints of the finite epochs stay as they were."""
    save = str(tmp_path)
    argv = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save,
            "--epochs", "1", "--skip-validation", "--seed", "1"] + TINY
    run_ok(train_student.main, argv)
    folder = student_folder(save, "resnet8", "resnet14", "kd", "1.0", "1.0", "0.0")
    last = os.path.join(folder, "resnet8_last.pth")
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder) if f.endswith(".pth")}
    assert last in [os.path.join(folder, f) for f in before]
    # resume for a second epoch with a learning rate no network survives
    ckpt = torch.load(last, weights_only=False)
    for g in ckpt["optimizer"]["param_groups"]:
        g["lr"] = 1e30
    torch.save(ckpt, last)
    before[os.path.basename(last)] = open(last, "rb").read()
    msg = run_fails(train_student.main, argv[:argv.index("--epochs") + 1] + ["2"] + argv[argv.index("--epochs") + 2:]
                    + ["--resume", last, "--learning_rate", "1e30"], capsys)
    assert "diverged" in msg and "epoch 2" in msg and "-b/--beta" in msg
    after = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder) if f.endswith(".pth")}
    assert after == before


def test_divergence_is_caught_at_print_freq_in_an_init_stage(data_dir, teacher_ckpt, tmp_path, capsys):
    """A NaN/inf loss is checked every --print_freq steps, in init stages too: the run stops there (one line,
    exit 2) instead of handing NaN modules to the main stage and training an epoch on them."""
    save = str(tmp_path)
    argv = ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--data_folder", data_dir, "--save_dir", save,
            "--epochs", "1", "--skip-validation", "--distill", "hint", "-c", "1", "-d", "0", "-b", "1",
            "--init_epochs", "2", "--learning_rate", "1e30"] + TINY + ["--print_freq", "2"]
    msg = run_fails(train_student.main, argv, capsys)
    assert "diverged" in msg and "step 2 of epoch 1" in msg and "init stage" in msg
    folder = student_folder(save, "resnet8", "resnet14", "hint", "1.0", "0.0", "1.0")
    assert json.load(open(os.path.join(folder, "summary.json")))["status"] == "diverged"
    assert not os.path.exists(os.path.join(folder, "metrics.jsonl"))  # the main stage never ran
    assert not [f for f in os.listdir(folder) if f.endswith(".pth")]


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth")
    atomic_save({"a": torch.ones(3)}, path)

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------ teacher files

@pytest.mark.parametrize("fmt", ["repdistiller", "dataparallel", "state_dict_key", "bare", "ours"])
def test_teacher_checkpoint_formats_load_and_reproduce_outputs(fmt, tmp_path):
    torch.manual_seed(0)
    net = model_dict["resnet8x4"](num_classes=100)
    with torch.no_grad():
        net.train()
        net(torch.randn(8, 3, 32, 32))  # non-trivial BN statistics
    net.eval()
    sd = net.state_dict()
    obj = {"repdistiller": {"model": sd, "epoch": 240, "accuracy": torch.tensor(72.5)},
           "dataparallel": {"model": {f"module.{k}": v for k, v in sd.items()}},
           "state_dict_key": {"state_dict": sd},
           "bare": sd,
           "ours": {"model": sd, "arch": "resnet8x4", "epoch": 3}}[fmt]
    folder = tmp_path / "resnet8x4_vanilla_cifar100_trial_0"
    folder.mkdir()
    path = str(folder / "ckpt_epoch_240.pth")
    torch.save(obj, path)
    model, arch, _ = build_teacher(path, 100)
    assert arch == "resnet8x4"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), net(x))


def test_teacher_architecture_sources(tmp_path):
    names = list(model_dict)
    assert arch_from_path("save/models/resnet32x4_vanilla/ckpt_epoch_240.pth", names) == "resnet32x4"
    assert arch_from_path("x/wrn_40_2_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt.pth", names) == "wrn_40_2"
    assert arch_from_path("x/S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1/a.pth", names) == "resnet8x4"
    assert arch_from_path("x/S~vgg8_T~vgg13_cifar100_kd_r~1_a~1_b~0_1/a.pth", names) == "vgg8"
    assert arch_from_path("x/ResNet50_imagenet_vanilla_imagenet_trial_0/a.pth", names) == "ResNet50_imagenet"
    assert arch_from_path("x/ResNet50_vanilla_cifar100_trial_0/a.pth", names) == "ResNet50"
    assert arch_from_path("x/my_teacher/a.pth", names) is None
    sd = model_dict["resnet8"](num_classes=10).state_dict()
    path = str(tmp_path / "t.pth")
    torch.save({"model": sd, "arch": "resnet8"}, path)
    assert build_teacher(path, 10, None)[1] == "resnet8"
    with pytest.raises(ConfigError, match="contradicts"):
        build_teacher(path, 10, "resnet14")
    torch.save({"model": sd}, path)
    with pytest.raises(ConfigError, match="--model_t"):
        build_teacher(path, 10, None)
    assert build_teacher(path, 10, "resnet8")[1] == "resnet8"
    with pytest.raises(ConfigError, match="classes"):
        build_teacher(path, 100, "resnet8")


def test_main_returns_the_summary_and_a_fresh_run_restarts_the_metrics_log(data_dir, tmp_path):
    argv = ["--model", "resnet8", "--data_folder", data_dir, "--epochs", "1", "--save_dir", str(tmp_path)] + TINY
    first = train_teacher.main(argv)
    second = train_teacher.main(argv)  # a fresh run (no --resume) in the same folder
    assert first["last_epoch"] == second["last_epoch"] == 1 and "best_acc" in second
    folder = os.path.join(str(tmp_path), "teachers", "models", "resnet8_vanilla_cifar100_trial_0")
    assert [json.loads(x)["epoch"] for x in open(os.path.join(folder, "metrics.jsonl"))] == [1]
