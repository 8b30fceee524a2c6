"""train_group.py: K students, one teacher forward per batch, one data stream, each student the same
experiment as its separate train_student.py run.

* bitwise: a group of kd, crd, cka_group and FitNet with an init stage, on CPU with --deterministic,
  gives every student exactly the weights, distiller state and logged metrics of its separate run
  (the ``separate_command`` the group records), though the teacher ran once per batch for all of them;
* the teacher's forward runs once per batch, not once per student;
* a diverging student stops alone (one line, its folder says so), the others finish; a refused row stops
  the group before any training; rows that would share a folder, or change a group-wide flag, are refused;
* resuming the group (--resume_all) is exact, and a finished student is left as it is.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

import pytest
import torch

import train_group
import train_student
import train_teacher
from fakedata import make_cifar
from helper.checkpoint import load_file

SEP = ":" if os.name != "nt" else "~"
TINY = ["--dataset", "cifar100", "--batch_size", "16", "--print_freq", "2", "--num_workers", "0",
        "--save_freq", "0", "--lr_decay_epochs", "1", "--deterministic"]
ROWS = {
    "kd": "--distill kd -c 0.1 -d 0.9",
    "crd": "--distill crd -c 1 -d 0 -b 0.8 --nce_k 32 --feat_dim 16",
    "cka_group": "--distill cka_group -c 1 -d 1 -b 1 --cka_images 32",
    "hint": "--distill hint -c 1 -d 0 -b 1 --init_epochs 1 --hint_layer 2",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gdata")
    make_cifar(str(root), "cifar100", n_train=72, n_test=32, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def teacher(data_dir, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("gteacher"))
    train_teacher.main(["--model", "resnet14", "--data_folder", data_dir, "--epochs", "1", "--save_dir", save]
                       + TINY)
    return os.path.join(save, "teachers", "models", "resnet14_vanilla_cifar100_trial_0", "resnet14_best.pth")


def shared(data_dir, teacher, save, epochs=2):
    return ["--path_t", teacher, "--model_s", "resnet8", "--data_folder", data_dir, "--epochs", str(epochs),
            "--save_dir", save, "--trial", "3"] + TINY


def folder(save, distill, c, d, b, trial="3"):
    return os.path.join(save, "students", "models",
                        f"S{SEP}resnet8_T{SEP}resnet14_cifar100_{distill}_r{SEP}{c}_a{SEP}{d}_b{SEP}{b}_{trial}")


FOLDERS = {"kd": ("kd", 0.1, 0.9, 0.0), "crd": ("crd", 1.0, 0.0, 0.8), "cka_group": ("cka_group", 1.0, 1.0, 1.0),
           "hint": ("hint", 1.0, 0.0, 1.0)}


def state(path):
    ckpt = load_file(path)
    return ckpt["model"], ckpt["distiller"], ckpt["optimizer"]


def metrics(path):
    return [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]


def assert_bitwise(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_bitwise(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise(x, y, f"{what}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{what} differs (max {float((a.double() - b.double()).abs().max()):.3g})"
    else:
        assert a == b, (what, a, b)


def test_group_students_are_bitwise_their_separate_runs(data_dir, teacher, tmp_path, monkeypatch):
    g_save, s_save = str(tmp_path / "group"), str(tmp_path / "separate")
    calls = {"n": 0}
    real = train_student.FrozenTeacher.outputs

    def counted(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(train_student.FrozenTeacher, "outputs", counted)
    argv = shared(data_dir, teacher, g_save)
    for row in ROWS.values():
        argv += ["--student", row]
    opts = train_group.parse_group(argv)
    summaries = train_group.main(argv)
    assert [s["status"] for s in summaries] == ["finished"] * 4
    # 72 images, batch 16, drop_last (cka_group): 4 batches x (1 init epoch + 2 epochs), one teacher forward each
    assert calls["n"] == 4 * 3, calls
    monkeypatch.setattr(train_student.FrozenTeacher, "outputs", real)
    for opt, name in zip(opts, ROWS):
        cmd = shlex.split(opt.separate_command)[2:]
        cmd[cmd.index("--save_dir") + 1] = s_save
        assert "--data_seed" in cmd and ("--drop_last" in cmd) == (name != "cka_group")
        train_student.main(cmd)
        fa, fb = folder(g_save, *FOLDERS[name]), folder(s_save, *FOLDERS[name])
        assert_bitwise(state(os.path.join(fa, "resnet8_last.pth")), state(os.path.join(fb, "resnet8_last.pth")), name)
        ma, mb = metrics(fa), metrics(fb)
        for rec in ma + mb:  # wall-clock fields differ, the rest must not
            rec.pop("epoch_time"), rec.pop("img_per_s")
        assert ma == mb, name
        params = json.load(open(os.path.join(fa, "parameters.json")))
        assert params["data_seed"] == 3 and params["seed"] == 3 and params["drop_last"] is True


def test_a_label_only_row_is_the_train_teacher_run(data_dir, teacher, tmp_path):
    """A row with no distillation term (``--distill kd -c 1 -d 0 -b 0``: the seed scripts' label-only
    student) trains exactly as train_teacher.py trains that model with the same seed, data seed and optimiser
    (Adam with a cosine schedule, as seeds/004): the same weights, optimiser state and metrics."""
    g_save, t_save = str(tmp_path / "g"), str(tmp_path / "t")
    opt = ["--optimizer", "adam", "--learning_rate", "0.01", "--weight_decay", "0", "--lr_schedule", "cosine"]
    argv = shared(data_dir, teacher, g_save) + opt + ["--student", "--distill kd -c 1 -d 0 -b 0",
                                                      "--student", "--distill hint -c 0.5 -d 0 -b 0.5"]
    train_group.main(argv)
    train_teacher.main(["--model", "resnet8", "--data_folder", data_dir, "--epochs", "2", "--save_dir", t_save,
                        "--trial", "3", "--seed", "3", "--data_seed", "3"] + TINY + opt)
    fa = folder(g_save, "kd", 1.0, 0.0, 0.0)
    fb = os.path.join(t_save, "teachers", "models", "resnet8_vanilla_cifar100_trial_3")
    a, b = load_file(os.path.join(fa, "resnet8_last.pth")), load_file(os.path.join(fb, "resnet8_last.pth"))
    assert_bitwise((a["model"], a["optimizer"]), (b["model"], b["optimizer"]), "label-only row")
    ma, mb = metrics(fa), metrics(fb)
    for rec in ma + mb:  # wall-clock fields differ, the rest must not
        rec.pop("epoch_time"), rec.pop("img_per_s")
    assert ma == mb and len(ma) == 2


def test_a_diverging_student_stops_alone(data_dir, teacher, tmp_path, capsys):
    save = str(tmp_path)
    argv = shared(data_dir, teacher, save) + ["--student", ROWS["kd"],
                                              "--student", "--distill similarity -c 1 -d 0 -b 1e30"]
    summaries = train_group.main(argv)
    assert summaries[0]["status"] == "finished" and summaries[0]["last_epoch"] == 2
    assert summaries[1]["status"] == "diverged" and "step 2 of epoch 1" in summaries[1]["stopped"]
    out = capsys.readouterr().out
    assert sum("stopped: the training loss became" in ln for ln in out.splitlines()) == 1
    bad = folder(save, "similarity", 1.0, 0.0, 1e30)
    assert json.load(open(os.path.join(bad, "summary.json")))["status"] == "diverged"
    assert not os.path.exists(os.path.join(bad, "resnet8_last.pth"))


def run_fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        train_group.main(argv)
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("  warnings.warn")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_refusals_before_any_training(data_dir, teacher, tmp_path, capsys):
    save = str(tmp_path)
    base = shared(data_dir, teacher, save)
    msg = run_fails(base + ["--student", ROWS["kd"], "--student", "--distill crd -c 1 -d 0 -b 0"], capsys)
    assert "student 2" in msg and "-b/--beta is 0" in msg
    assert not os.path.exists(os.path.join(save, "students"))  # nothing trained, nothing written
    msg = run_fails(base + ["--student", ROWS["kd"], "--student", ROWS["kd"]], capsys)
    assert "two students would write to" in msg and "--trial" in msg
    msg = run_fails(base + ["--student", ROWS["kd"], "--student", ROWS["crd"] + " --epochs 3"], capsys)
    assert "--epochs differs" in msg
    msg = run_fails(base + ["--student", ROWS["kd"] + " --data_seed 5"], capsys)
    assert "--data_seed" in msg
    assert "no students" in run_fails(base, capsys)


def test_group_resume_is_exact_and_keeps_finished_students(data_dir, teacher, tmp_path):
    rows = ["--student", ROWS["kd"], "--student", ROWS["cka_group"]]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train_group.main(shared(data_dir, teacher, one) + rows)
    train_group.main(shared(data_dir, teacher, two, epochs=1) + rows)
    # the second group is extended to 2 epochs: both students continue from epoch 1
    train_group.main(shared(data_dir, teacher, two) + rows + ["--resume_all"])
    for name in ("kd", "cka_group"):
        a = state(os.path.join(folder(one, *FOLDERS[name]), "resnet8_last.pth"))
        b = state(os.path.join(folder(two, *FOLDERS[name]), "resnet8_last.pth"))
        # the distiller's tensors (its diagnostics' labels name the run's length: "end (epoch 1)" of a
        # 1-epoch run is "middle (epoch 1)" of a 2-epoch one)
        a, b = [(m, {k: v for k, v in d.items() if torch.is_tensor(v)}, o) for m, d, o in (a, b)]
        assert_bitwise(a, b, name)
        assert [r["epoch"] for r in metrics(folder(two, *FOLDERS[name]))] == [1, 2]
    before = json.load(open(os.path.join(folder(two, *FOLDERS["kd"]), "summary.json")))
    summaries = train_group.main(shared(data_dir, teacher, two) + rows + ["--resume_all"])  # nothing left to do
    assert summaries[0] == before


def test_main_job_trains_its_students_as_one_group(tmp_path):
    """scripts/main_job.py (the README's first command) end to end on tiny generated Fashion-MNIST files:
    the teacher, then baseline, kd and cka_group as one group, and the table of the four runs."""
    import subprocess
    import sys
    from fakedata import make_idx
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = make_idx(str(tmp_path / "fm"), n_train=200, n_test=40)
    save = str(tmp_path / "save")
    p = subprocess.run([sys.executable, "scripts/main_job.py", "--data_folder", data, "--save_dir", save,
                        "--train_subset", "160", "--epochs_t", "1", "--epochs_s", "1", "--batch_size", "16"],
                       cwd=root, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| ") and "top-1" not in ln]
    assert [ln.split("|")[1].strip().split(" (")[0] for ln in table] == ["teacher", "baseline", "kd", "cka_group"]
    assert "as one group" in p.stdout and p.stdout.count("[3/3 cka_group resnet8 t0] epoch 1/1") == 1
    students = os.listdir(os.path.join(save, "students", "models"))
    assert len(students) == 3 and any("_kd_r:1.0_a:0.0_b:0.0_0" in s.replace("~", ":") for s in students)


def test_paired_statistics_against_the_t_formula():
    import math
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import paired_table
    d = paired_table.paired([1.0, 2.0, 3.0, 4.0, 5.0])
    sd = math.sqrt(sum((x - 3.0) ** 2 for x in range(1, 6)) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4)
    assert d["mean"] == 3.0 and d["std"] == pytest.approx(sd)
    assert d["ci95"] == pytest.approx((3.0 - half, 3.0 + half)) and d["distinguishable"]
    level = paired_table.paired([0.3, -0.2, 0.1, -0.4, 0.25])
    assert level["ci95"][0] < 0 < level["ci95"][1] and not level["distinguishable"]


def test_paired_table_report_lists_unrun_rows_once_and_gives_no_interval_from_one_trial():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import paired_table
    s = lambda acc: {"status": "finished", "last_acc": acc, "best_acc": acc + 0.1}  # noqa: E731
    results = {"kd": {1: s(85.0), 2: s(86.0)}, "a": {1: s(86.0), 2: s(86.5)}, "b": {1: s(84.0)},
               "c": {}, "d": {1: {"status": "diverged", "last_acc": None, "best_acc": 10.0}}}
    rows = [(k, "") for k in results]
    text, data = paired_table.report(results, rows, [1, 2], "kd")
    assert "| a | 86.25 ± 0.35 |" in text and "+0.75 ± 0.35 (n=2)" in text
    assert "| b | 84.00 |" in text and "-1.00 (n=1) | no interval from one trial" in text
    assert "nan" not in text and "| c |" not in text and text.endswith("Not run yet (no finished trial): c.")
    assert "| d | - | - | div., - | no common trial" in text and data["d"]["diverged"] == [1]


def test_paired_table_runs_groups_per_trial_and_reports_differences(data_dir, teacher, tmp_path):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import paired_table
    table = tmp_path / "t.txt"
    table.write_text("# label | flags\nbase | --distill kd -c 1 -d 0 -b 0\nkd | --distill kd -c 1 -d 1 -b 0\n")
    save = str(tmp_path / "s")
    shared = ["--path_t", teacher, "--model_s", "resnet8", "--data_folder", data_dir, "--epochs", "1",
              "--save_dir", save] + TINY
    out = str(tmp_path / "r.md")
    data = paired_table.main(["--table", str(table), "--trials", "1,2", "--reference", "base", "--max_group", "1",
                              "--out", out, "--"] + shared)
    assert data["base"]["trials"] == [1, 2] and data["kd"]["trials"] == [1, 2]
    diffs = data["kd"]["paired"]["diffs"]
    assert diffs == pytest.approx([k - b for k, b in zip(data["kd"]["last"], data["base"]["last"])])
    for t in (1, 2):  # one data stream per trial, shared by the two rows (even in separate groups)
        params = [json.load(open(os.path.join(folder(save, d, 1.0, w, 0.0, trial=f"{lab}_{t}"), "parameters.json")))
                  for lab, d, w in (("base", "kd", 0.0), ("kd", "kd", 1.0))]
        assert [p["data_seed"] for p in params] == [t, t] and [p["seed"] for p in params] == [t, t]
    assert "| kd |" in open(out).read() and os.path.isfile(str(tmp_path / "r.json"))
    again = paired_table.main(["--table", str(table), "--trials", "1,2", "--reference", "base", "--report_only", "--"]
                              + shared)
    assert again["kd"]["last"] == data["kd"]["last"]


def test_a_student_that_asks_for_a_second_view_gets_it_in_a_group(data_dir, teacher, tmp_path):
    """The stream serves MLKD's strongly augmented view when any student asks for it (here the second row):
    the mlkd student is then bitwise its separate run, and the kd student, which ignores the view, too."""
    g_save, s_save = str(tmp_path / "g"), str(tmp_path / "s")
    rows = ["--distill kd -c 1 -d 1 -b 0", "--distill mlkd -c 0.1 -d 0 -b 0.9"]
    argv = shared(data_dir, teacher, g_save, epochs=1)
    for r in rows:
        argv += ["--student", r]
    opts = train_group.parse_group(argv)
    assert [o.strong_aug for o in opts] == ["none", "randaugment"]
    train_group.main(argv)
    for opt in opts:
        cmd = shlex.split(opt.separate_command)[2:]
        cmd[cmd.index("--save_dir") + 1] = s_save
        train_student.main(cmd)
        o = train_student.parse_option(cmd)
        train_student.name_run(o, "resnet14")
        rel = os.path.relpath(o.save_folder, s_save)
        assert_bitwise(state(os.path.join(g_save, rel, "resnet8_last.pth")),
                       state(os.path.join(s_save, rel, "resnet8_last.pth")), opt.distill)


def test_cka_curves_measures_any_student_under_one_grouping(data_dir, teacher, tmp_path):
    """scripts/cka_curves.py: epoch 0 (the run's initialisation, rebuilt from its seed) and every saved
    epoch of a kd and a cka_group student, on the cka_group run's groups; the final point equals a direct
    group_cka of the last checkpoint."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import cka_curves
    from helper.checkpoint import build_teacher
    from helper.cka_diagnostics import group_cka, load_grouping
    from helper.util import RNGStream
    from models import model_dict
    save = str(tmp_path)
    argv = shared(data_dir, teacher, save) + ["--save_freq", "1", "--student", ROWS["kd"], "--student", ROWS["cka_group"]]
    train_group.main(argv)
    kd, cka = folder(save, *FOLDERS["kd"]), folder(save, *FOLDERS["cka_group"])
    grouping = os.path.join(cka, "cka_grouping.json")
    out = cka_curves.main(["--path_t", teacher, "--grouping", grouping, "--run", f"kd={kd}", "--run", f"cka={cka}",
                           "--images", "32"])
    curves = out["curves"]
    assert [r["epoch"] for r in curves["kd"]] == [0, 1, 2] == [r["epoch"] for r in curves["cka"]]
    g = load_grouping(grouping)
    model_t, _, _ = build_teacher(teacher, 100)
    model_t.eval()
    with RNGStream(3):
        init = model_dict["resnet8"](num_classes=100)
    images = cka_curves.plain_images(json.load(open(os.path.join(kd, "parameters.json"))), (3, 32, 32), 32)
    with torch.no_grad():
        assert group_cka(model_t, init, g, images)["group_cka"] == pytest.approx(curves["kd"][0]["group_cka"])
        last = model_dict["resnet8"](num_classes=100)
        last.load_state_dict(state(os.path.join(kd, "ckpt_epoch_2.pth"))[0])
        assert group_cka(model_t, last, g, images)["group_cka"] == pytest.approx(curves["kd"][-1]["group_cka"])
    assert len(curves["kd"][0]["group_cka"]) == len(g["teacher_ends"])


@pytest.mark.parametrize("table", sorted(
    f for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "tables"))
    if f.endswith(".txt")))
def test_every_table_file_parses_as_one_group(table):
    """Each table of scripts/tables (named <dataset>_<teacher>_<student>.txt) is read by paired_table and its
    rows parse as one group of train_student.py flags for its pair: a misspelt flag or a value outside an
    option's choices fails here, not an hour into a study."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "scripts"))
    import paired_table
    from models import model_dict
    rows = paired_table.read_table(os.path.join(root, "scripts", "tables", table))
    _, teacher, student = table[:-len(".txt")].split("_", 2)
    assert teacher in model_dict and student in model_dict and len(rows) >= 3
    argv = ["--path_t", "teacher.pth", "--model_t", teacher, "--model_s", student, "--dataset", "fashionmnist"]
    for label, flags in rows:
        argv += ["--student", paired_table.row_flags(label, flags, 1)]
    opts = train_group.parse_group(argv)
    assert [o.distill for o in opts] == [shlex.split(f)[shlex.split(f).index("--distill") + 1] for _, f in rows]
