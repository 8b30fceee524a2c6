"""The reproduction scripts (scripts/run_*.sh), the results table (scripts/summarize.py) and the seed
experiments (scripts/seed_*.py, in --smoke mode).

Shell scripts are checked through their dry runs: every printed command must parse with the real
train_teacher/train_student parsers, every method of the zoo must be present (or skipped by the script's
rule, which must agree with the distillers' own refusals), and each method's weights must equal its
distiller's ``recommended`` string. The run queue is exercised for real with a stub interpreter.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, ROOT)
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fakedata  # noqa: E402
import published  # noqa: E402
import summarize  # noqa: E402
import train_group  # noqa: E402
import train_student  # noqa: E402
import train_teacher  # noqa: E402
from distiller_zoo import DISTILLERS, BuildContext, build_distiller  # noqa: E402
from helper.errors import ConfigError  # noqa: E402
from models import model_dict  # noqa: E402

PAIRS = summarize.STANDARD_PAIRS
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- shell scripts ------------------------------------------------------------------------------------

def sh(script: str, tmp_path, *, check=True, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "SAVE": str(tmp_path / "save"), **{k: str(v) for k, v in env.items()}}
    for k in ("TRIALS", "GPUS", "DATA", "METHODS", "PAIRS", "EXTRA_ARGS", "ROLE", "NNODES", "TEACHER_PATH"):
        if k not in env:
            full.pop(k, None)
    r = subprocess.run(["bash", os.path.join(SCRIPTS, script)], cwd=ROOT, env=full, capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def dry(script: str, tmp_path, **env):
    """(commands as argv lists, comment lines) of a dry run."""
    out = sh(script, tmp_path, DRY_RUN=1, **env).stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    cmds = [shlex.split(ln) for ln in lines if not ln.startswith("#")]
    notes = [ln for ln in lines if ln.startswith("#")]
    return cmds, notes


def script_args(cmd: list, entry: str) -> list:
    """The arguments after ``python <entry>`` (or ``torchrun ... <entry>``)."""
    i = cmd.index(entry)
    return cmd[i + 1:]


def weights_of(text: str) -> tuple:
    """'-c 1 -d 0 -b 100' (or a whole argv) -> (1.0, 0.0, 100.0) through the real parser."""
    opt = train_student.build_parser().parse_args(["--path_t", "x.pth"] + text.split() if isinstance(text, str)
                                                   else text)
    return opt.cls, opt.div, opt.beta


def bash_table(script: str, name: str) -> dict:
    """A `declare -A NAME=( [k]="v" ... )` table of a script."""
    text = open(os.path.join(SCRIPTS, script)).read()
    body = re.search(rf"declare -A {name}=\((.*?)\n\)", text, re.S).group(1)
    return {k: v1 or v2 for k, v1, v2 in re.findall(r'\[([\w:*]+)\]=(?:"([^"]*)"|(\S+))', body)}


def test_vanilla_dry_run_trains_every_model_of_every_pair(tmp_path):
    cmds, notes = dry("run_cifar_vanilla.sh", tmp_path, TRIALS=2, DATA="/data/cifar", GPUS="0,1")
    models = {m for p in PAIRS for m in p}
    assert len(models) == 15 and len(cmds) == 2 * 15
    seen = set()
    for cmd in cmds:
        assert cmd[:2] == ["python", "train_teacher.py"]
        opt = train_teacher.parse_option(script_args(cmd, "train_teacher.py"))
        assert opt.dataset == "cifar100" and opt.data_folder == "/data/cifar"
        assert opt.save_dir == str(tmp_path / "save") and opt.epochs == 240
        seen.add((opt.model, opt.trial))
    assert seen == {(m, t) for m in models for t in ("0", "1")}
    assert any("GPU slots: 0 1" in n for n in notes)
    # teachers first, so the distillation script can start early
    first = [c[c.index("--model") + 1] for c in cmds[:6]]
    assert set(first) == {t for t, _ in PAIRS}


def test_vanilla_env_role_pairs_extra_args(tmp_path):
    cmds, _ = dry("run_cifar_vanilla.sh", tmp_path, TRIALS=1, ROLE="teachers", PAIRS="vgg13:vgg8 resnet56:resnet20",
                  EXTRA_ARGS="--epochs 2 --amp")
    assert [c[c.index("--model") + 1] for c in cmds] == ["vgg13", "resnet56"]
    assert all(c[-3:] == ["--epochs", "2", "--amp"] for c in cmds)
    r = sh("run_cifar_vanilla.sh", tmp_path, check=False, DRY_RUN=1, TRIALS="x")
    assert r.returncode == 2 and "TRIALS" in r.stderr


def expected_skips() -> set:
    """(method, teacher, student) that cannot run: the distillers' own refusals (checked below)."""
    same_width = {("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                  ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")}
    cross = {("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
             ("wrn_40_2", "ShuffleV1"), ("vgg13", "MobileNetV2")}
    out = {(m, t, s) for (t, s) in PAIRS if (t, s) not in same_width for m in ("fsp", "kdsvd")}
    out |= {("cosine", t, s) for (t, s) in cross}
    return out


# rows that are a method plus a loop option, with the published setting of the paper that made them
# (LS README: KD+LS CE 0.1 KD 9 at base T 2, DKD+LS and MLKD+LS the weight 9 on the method's loss;
# mdistiller: KD+DOT the KD recipe with the DOT optimiser)
DERIVED_ROWS = {"kd_ls": "-c 0.1 -d 9 -b 0", "dkd_ls": "-c 1 -d 0 -b 9", "mlkd_ls": "-c 0.1 -d 0 -b 9",
                "kd_dot": "-c 0.1 -d 0.9 -b 0"}


def test_distill_dry_run_every_method_published_weights(tmp_path):
    global PAIR_W
    PAIR_W = bash_table("run_cifar_distill.sh", "PAIR_WEIGHTS")
    assert PAIR_W and all(k.count(":") == 2 for k in PAIR_W)
    cmds, notes = dry("run_cifar_distill.sh", tmp_path, TRIALS=1, DATA="/data/c100")
    ran = set()
    for cmd in cmds:
        assert cmd[:2] == ["python", "train_student.py"]
        args = script_args(cmd, "train_student.py")
        opt = train_student.parse_option(args)
        assert opt.data_folder == "/data/c100" and opt.dataset == "cifar100" and opt.trial == "0"
        t = re.search(r"models/(\w+?)_vanilla_cifar100_trial_0/(\w+)_last\.pth$", opt.path_t)
        assert t and t.group(1) == t.group(2) and opt.path_t.startswith(str(tmp_path / "save"))
        # the weights of each method are its distiller's published (recommended) ones, or the per-pair
        # ones its own scripts use (PAIR_WEIGHTS)
        row = opt.distill + ("_ls" if opt.logit_stand else "") + ("_dot" if opt.optimizer == "dot" else "")
        override = next((PAIR_W[k] for k in (f"{row}:{t.group(1)}:{opt.model_s}", f"{row}:*:{opt.model_s}")
                         if k in PAIR_W), None)
        published = DERIVED_ROWS.get(row) or DISTILLERS[opt.distill].recommended
        assert (opt.cls, opt.div, opt.beta) == weights_of(override or published), cmd
        if row.endswith("_ls"):  # LS's base temperature (3 only for KD+LS on vgg13 -> vgg8)
            assert opt.kd_T == (3.0 if (row, opt.model_s) == ("kd_ls", "vgg8") else 2.0), cmd
        if opt.distill == "hint":  # RepDistiller's joint FitNet on feats[2]
            assert opt.hint_layer == 2 and opt.init_epochs == 0
        else:
            assert opt.init_epochs == 30
        ran.add((opt.distill, t.group(1), opt.model_s))
    skipped = set()
    for n in notes:
        m = re.match(r"# skip (\w+) on (\w+) -> (\w+): ", n)
        if m:
            skipped.add(m.groups())
    assert skipped == expected_skips()
    assert ran | skipped == {(m, t, s) for m in DISTILLERS for (t, s) in PAIRS}
    assert not ran & skipped
    assert any("--hint_layer 2 --init_epochs 0" in n for n in notes)
    assert set(bash_table("run_cifar_distill.sh", "WEIGHTS")) == set(DISTILLERS) | {"crd_kd"} | set(DERIVED_ROWS)


def test_distill_env_trials_methods_pairs_teacher_path(tmp_path):
    cmds, _ = dry("run_cifar_distill.sh", tmp_path, TRIALS=3, METHODS="kd crd_kd", PAIRS="vgg13:vgg8",
                  TEACHER_PATH="/ckpt/{t}_vanilla/ckpt_epoch_240.pth", GPUS="2,3", EXTRA_ARGS="--epochs 1")
    got = [(c[c.index("--trial") + 1], weights_of(script_args(c, "train_student.py")),
            c[c.index("--path_t") + 1]) for c in cmds]
    assert got == [(str(t), w, "/ckpt/vgg13_vanilla/ckpt_epoch_240.pth")
                   for t in range(3) for w in ((0.1, 0.9, 0.0), (1.0, 1.0, 0.8))]
    assert all(c[-2:] == ["--epochs", "1"] for c in cmds)
    r = sh("run_cifar_distill.sh", tmp_path, check=False, DRY_RUN=1, METHODS="kd nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr


def test_group_switch_packs_each_teachers_trial_into_one_train_group_run(tmp_path):
    """GROUP=1: the rows of one (teacher, dataset, trial) become one train_group.py command whose students
    are exactly the train_student.py runs of GROUP=0 (same flags, hence the same folders)."""
    env = dict(TRIALS=2, METHODS="kd crd cka_group", PAIRS="resnet32x4:resnet8x4 vgg13:vgg8",
               TEACHER_PATH="/ckpt/{t}.pth", EXTRA_ARGS="--epochs 1")
    single, _ = dry("run_cifar_distill.sh", tmp_path, **env)
    grouped, notes = dry("run_cifar_distill.sh", tmp_path, GROUP=1, **env)
    assert len(single) == 12 and len(grouped) == 4 and all("train_group.py" in c for c in grouped)
    rows = []
    for cmd in grouped:
        args = script_args(cmd, "train_group.py")
        assert "--resume_all" in args
        opts = train_group.parse_group(args)  # one group: the group-wide flags agree
        assert len({(o.path_t, o.trial) for o in opts}) == 1 and len(opts) == 3
        rows += [shlex.split(o.row) for o in opts]
    assert sorted(map(tuple, rows)) == sorted(tuple(script_args(c, "train_student.py")) for c in single)


def test_distill_refuses_to_start_without_teachers(tmp_path):
    r = sh("run_cifar_distill.sh", tmp_path, check=False, TRIALS=1, METHODS="kd", PAIRS="vgg13:vgg8",
           PYTHON="false")
    assert r.returncode == 2 and "teacher checkpoints not found" in r.stderr and "run_cifar_vanilla" in r.stderr


def test_script_tables_and_skip_rule_match_the_models(tmp_path):
    """WIDTHS/LAST_MAP (distill) and LAYERS (cka) are the models' real shapes, and the skip rule skips
    exactly the (method, pair)s whose distiller refuses to be built."""
    widths = bash_table("run_cifar_distill.sh", "WIDTHS")
    last = bash_table("run_cifar_distill.sh", "LAST_MAP")
    layers = bash_table("run_cka_group.sh", "LAYERS")
    models = sorted({m for p in PAIRS for m in p})
    assert set(widths) == set(last) == set(layers) == set(models)
    probes = {}
    for name in models:
        net = model_dict[name](num_classes=100)
        probes[name] = (net, train_student.probe(net, frozenset({"feats"}), (3, 32, 32), "cpu"))
        feats = probes[name][1].feats
        assert widths[name].split() == [str(f.shape[1]) for f in feats[:-1]], name
        assert int(last[name]) == feats[-2][0].numel(), name
        assert int(layers[name]) == len(net.layer_names()), name
    refused = set()
    for t, s in PAIRS:
        for method in ("fsp", "kdsvd", "cosine"):
            opt = train_student.build_parser().parse_args(["--distill", method, "--path_t", "x", "--model_s", s])
            opt.seed, opt.world_size = 0, 1
            ctx = BuildContext(opt=opt, s_probe=probes[s][1], t_probe=probes[t][1], model_s=probes[s][0],
                               model_t=probes[t][0], num_classes=100, n_train=64, local_batch_size=64)
            try:
                build_distiller(method, ctx)
            except ConfigError:
                refused.add((method, t, s))
    assert refused == expected_skips()


def test_cifar_run_folder_names_match_train_student(tmp_path):
    weights = bash_table("run_cifar_distill.sh", "WEIGHTS")
    flags = bash_table("run_cifar_distill.sh", "FLAGS")
    distills = bash_table("run_cifar_distill.sh", "DISTILL")
    calls = "; ".join(f'student_folder resnet8x4 resnet32x4 cifar100 "$(method_tag {distills.get(m, m)} '
                      f'{flags.get(m, "")})" "{w}" 2' for m, w in weights.items())
    out = subprocess.run(["bash", "-c", f"source scripts/lib_runs.sh; {calls}; teacher_folder vgg8 cifar100 1"],
                         cwd=ROOT, env={**os.environ, "SAVE": "S"}, capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    for (m, w), line in zip(weights.items(), lines):
        distill = distills.get(m, m)
        opt = train_student.parse_option(["--path_t", "x.pth", "--model_s", "resnet8x4", "--distill", distill,
                                          "--dataset", "cifar100", "--trial", "2", "--save_dir", "S"] + w.split()
                                         + flags.get(m, "").split())
        train_student.name_run(opt, "resnet32x4")
        assert line == opt.save_folder
    opt = train_teacher.parse_option(["--model", "vgg8", "--dataset", "cifar100", "--trial", "1", "--save_dir", "S"])
    assert lines[-1] == opt.save_folder


@pytest.mark.parametrize("distill, flags", [
    ("kd", ""), ("kd", "--logit_stand --kd_T 2"), ("kd", "--optimizer dot"), ("kd", "--strong_aug randaugment"),
    ("kd", "--logit_stand --optimizer dot --strong_aug randaugment"), ("kd", "--optimizer sgd --strong_aug none"),
    ("crd", "--logit_stand")])
def test_method_tag_of_the_scripts_is_train_students(distill, flags):
    """Loop options that change the method (LS, DOT, a second view) change the folder name alike in bash
    (lib_runs.sh method_tag, used for SKIP_DONE/RESUME) and in train_student.py."""
    out = subprocess.run(["bash", "-c", f"source scripts/lib_runs.sh; method_tag {distill} {flags}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    opt = train_student.parse_option(["--path_t", "x.pth", "--distill", distill, "-b", "1"] + flags.split())
    assert out == train_student.method_tag(opt)
    assert (out == distill) == (flags in ("", "--optimizer sgd --strong_aug none"))


def test_finished_runs_are_skipped_and_unfinished_ones_resumed(tmp_path):
    save = tmp_path / "save"
    done = save / "teachers/models/vgg13_vanilla_cifar100_trial_0"
    half = save / "teachers/models/vgg8_vanilla_cifar100_trial_0"
    done.mkdir(parents=True)
    half.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    (half / "vgg8_last.pth").write_bytes(b"")
    cmds, notes = dry("run_cifar_vanilla.sh", tmp_path, TRIALS=1, PAIRS="vgg13:vgg8")
    assert any(f"done, skipping: {done}" in n for n in notes)
    assert cmds == [["python", "train_teacher.py", "--model", "vgg8", "--dataset", "cifar100", "--data_folder",
                     "./data", "--trial", "0", "--save_dir", str(save), "--resume", str(half / "vgg8_last.pth")]]
    cmds, _ = dry("run_cifar_vanilla.sh", tmp_path, TRIALS=1, PAIRS="vgg13:vgg8", SKIP_DONE=0, RESUME=0)
    assert len(cmds) == 2 and not any("--resume" in c for c in cmds)


def test_queue_one_run_per_gpu_in_parallel_and_failures_reported(tmp_path):
    log = tmp_path / "calls.log"
    stub = tmp_path / "stub.sh"
    stub.write_text("#!/usr/bin/env bash\n"
                    'echo "start $(date +%s.%N) $CUDA_VISIBLE_DEVICES $*" >> "$STUB_LOG"\n'
                    "sleep 0.6\n"
                    'echo "end $(date +%s.%N) $CUDA_VISIBLE_DEVICES" >> "$STUB_LOG"\n'
                    '[[ " $* " == *" --model vgg8 "* ]] && { echo "stub failure"; exit 3; }\n'
                    "exit 0\n")
    stub.chmod(0o755)
    r = sh("run_cifar_vanilla.sh", tmp_path, check=False, TRIALS=1, GPUS="0,1",
           PAIRS="vgg13:vgg8 resnet56:resnet20 wrn_40_2:wrn_16_2", PYTHON=str(stub), STUB_LOG=str(log))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED (exit 3)" in r.stderr and "stub failure" in r.stderr and "1 of 6 runs failed" in r.stderr
    events = [ln.split() for ln in log.read_text().splitlines()]
    starts = [e for e in events if e[0] == "start"]
    assert len(starts) == 6 and {e[2] for e in starts} == {"0", "1"}
    assert {e[e.index("--model") + 1] for e in starts} == {"vgg13", "vgg8", "resnet56", "resnet20", "wrn_40_2",
                                                           "wrn_16_2"}
    # at most one run per GPU at any time
    for gpu in ("0", "1"):
        spans = sorted((float(e[1]), e[0]) for e in events if e[2] == gpu)
        depth = 0
        for _, kind in spans:
            depth += 1 if kind == "start" else -1
            assert depth <= 1
    logs = os.listdir(tmp_path / "save/logs/run_cifar_vanilla")
    assert "vgg8_vanilla_cifar100_trial_0.log" in logs and len(logs) == 6


def test_imagenet_dry_run_torchrun_recipe(tmp_path):
    cmds, notes = dry("run_imagenet_distill.sh", tmp_path, NNODES=2, NODE_RANK=1, GPUS_PER_NODE=4,
                      MASTER_ADDR="10.0.0.1", DATA="/imagenet", TEACHER="/w/r34.pth",
                      METHODS="teacher vanilla kd semckd")
    assert len(cmds) == 4
    for cmd in cmds:
        assert cmd[:11] == ["torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4",
                            "--master_addr", "10.0.0.1", "--master_port", "29500"]
    t = train_teacher.parse_option(script_args(cmds[0], "train_teacher.py"))
    assert t.model == "ResNet34_imagenet"
    v = train_teacher.parse_option(script_args(cmds[1], "train_teacher.py"))
    assert v.model == "ResNet18_imagenet"
    for cmd in cmds[2:]:
        opt = train_student.parse_option(script_args(cmd, "train_student.py"))
        assert (opt.model_s, opt.model_t, opt.path_t) == ("ResNet18_imagenet", "ResNet34_imagenet", "/w/r34.pth")
    for cmd in cmds:
        entry = "train_teacher.py" if "train_teacher.py" in cmd else "train_student.py"
        opt = (train_teacher if entry == "train_teacher.py" else train_student).parse_option(script_args(cmd, entry))
        assert (opt.dataset, opt.data_folder, opt.epochs, opt.learning_rate, opt.lr_decay_epochs, opt.weight_decay,
                opt.batch_size, opt.dali) == ("imagenet", "/imagenet", 90, 0.1, [30, 60], 1e-4, 256, "gpu")
    semckd = train_student.parse_option(script_args(cmds[3], "train_student.py"))
    assert (semckd.distill, semckd.cls, semckd.div, semckd.beta) == ("semckd", 1.0, 1.0, 50.0)
    r = sh("run_imagenet_distill.sh", tmp_path, check=False, DRY_RUN=1, GPUS_PER_NODE=3)
    assert r.returncode == 2 and "not divisible" in r.stderr


def test_imagenet_modern_rows_use_their_own_imagenet_settings(tmp_path):
    cmds, _ = dry("run_imagenet_distill.sh", tmp_path, GPUS_PER_NODE=8, TEACHER="/w/r34.pth",
                  METHODS="dkd dist reviewkd kd_ls kd_dot")
    opts = {}
    for cmd in cmds:
        o = train_student.parse_option(script_args(cmd, "train_student.py"))
        opts[o.distill + ("+LS" if o.logit_stand else "") + ("+DOT" if o.optimizer == "dot" else "")] = o
    assert (opts["dkd"].dkd_beta, opts["dkd"].kd_T, opts["dkd"].beta_warmup) == (0.5, 1.0, 1.0)
    assert (opts["dist"].beta, opts["dist"].kd_T) == (2.0, 1.0)
    assert (opts["reviewkd"].beta, opts["reviewkd"].beta_warmup, opts["reviewkd"].reviewkd_preact) == (1.0, 1.0, True)
    assert (opts["kd+LS"].cls, opts["kd+LS"].div, opts["kd+LS"].kd_T) == (1.0, 9.0, 2.0)
    assert (opts["kd+DOT"].cls, opts["kd+DOT"].div, opts["kd+DOT"].dot_delta) == (0.5, 0.5, 0.09)
    # every row in its own folder: KD+LS and KD+DOT are tagged
    assert len({train_student.method_tag(o) for o in opts.values()}) == 5


def test_cka_group_dry_run_ablations(tmp_path):
    cmds, notes = dry("run_cka_group.sh", tmp_path, TRIALS=2, PAIRS="resnet32x4:resnet8x4", NGROUPS="2 6 auto",
                      POOLS="0 8")
    seen = {}
    for cmd in cmds:
        opt = train_student.parse_option(script_args(cmd, "train_student.py"))
        assert opt.distill == "cka_group" and (opt.cls, opt.div, opt.beta) == weights_of(
            DISTILLERS["cka_group"].recommended)
        tag, idx = summarize.split_trial(opt.trial)
        assert opt.seed == int(idx)
        seen[(tag, idx)] = (opt.cka_grouping, opt.cka_groups, opt.cka_student_split, opt.cka_estimator, opt.cka_pool)
    for idx in ("0", "1"):   # n fixed at 3 (CKA_GROUPS), each ablation changes one option
        assert seen[("groups-3", idx)] == ("dp", "3", "even", "unbiased", 4)
        assert seen[("groups-3-grouping-uniform", idx)] == ("uniform", "3", "even", "unbiased", 4)
        assert seen[("groups-3-grouping-random", idx)] == ("random", "3", "even", "unbiased", 4)
        assert seen[("groups-3-split-proportional", idx)] == ("dp", "3", "proportional", "unbiased", 4)
        assert seen[("groups-3-split-anchored", idx)] == ("dp", "3", "anchored", "unbiased", 4)
        assert seen[("groups-2", idx)] == ("dp", "2", "even", "unbiased", 4)
        assert seen[("", idx)] == ("dp", "auto", "even", "unbiased", 4)   # the knee: run_cifar_distill's row
        assert seen[("groups-3-estimator-biased", idx)] == ("dp", "3", "even", "biased", 4)
        assert seen[("groups-3-pool-0", idx)] == ("dp", "3", "even", "unbiased", 0)
        assert seen[("groups-3-pool-8", idx)] == ("dp", "3", "even", "unbiased", 8)
    assert len(seen) == 20 and len(cmds) == 20  # groups-6 > min(17, 5) layers is skipped; each run once
    assert any("skip groups-6 on resnet32x4 -> resnet8x4" in n for n in notes)
    cmds, _ = dry("run_cka_group.sh", tmp_path, TRIALS=1, PAIRS="vgg13:vgg8", ABLATIONS="estimator", BASELINE=0)
    line = " ".join(cmds[0])
    assert len(cmds) == 1 and "--cka_estimator biased" in line and "--cka_groups 3" in line
    # CKA_GROUPS=auto: the runs and names of the knee, as before n was fixed
    cmds, _ = dry("run_cka_group.sh", tmp_path, TRIALS=1, PAIRS="vgg13:vgg8", ABLATIONS="grouping", CKA_GROUPS="auto")
    opts = [train_student.parse_option(script_args(c, "train_student.py")) for c in cmds]
    assert [(o.trial, o.cka_groups) for o in opts] == [("0", "auto"), ("grouping-uniform_0", "auto"),
                                                       ("grouping-random_0", "auto")]
    r = sh("run_cka_group.sh", tmp_path, check=False, DRY_RUN=1, CKA_GROUPS="three")
    assert r.returncode == 2 and "CKA_GROUPS: 'three'" in r.stderr


# ---- summarize.py -------------------------------------------------------------------------------------

def _write_run(folder, summary=None, metrics=None):
    os.makedirs(folder, exist_ok=True)
    if summary is not None:
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(summary, f)
    if metrics is not None:
        with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)


def _fake_save(root):
    """Three trials of two teachers/students, KD under both protocols, CRD, and odd folders."""
    accs = {"resnet32x4": [79.0, 79.5, 80.0], "resnet8x4": [72.0, 72.4, 73.1], "vgg13": [74.0, 74.2, 74.9],
            "vgg8": [70.0, 70.5, 70.6]}
    for m, a in accs.items():
        for t, acc in enumerate(a):
            _write_run(f"{root}/teachers/models/{m}_vanilla_cifar100_trial_{t}",
                       {"model": m, "dataset": "cifar100", "trial": str(t), "best_acc": acc + 0.5, "best_epoch": 200,
                        "last_acc": acc, "last_epoch": 240, "role": "vanilla"})
    runs = {("kd", 0.1, 0.9, 0.0): [73.0, 73.5, 74.0], ("kd", 1.0, 1.0, 0.0): [74.0, 74.2, 74.4],
            ("crd", 1.0, 0.0, 0.8): [75.0, 75.6, 75.3], ("cka_group", 1.0, 1.0, 1.0): [76.0, 76.0, 76.3]}
    for (d, c, dv, b), accs_s in runs.items():
        for t_model, s_model, shift in (("resnet32x4", "resnet8x4", 0.0), ("vgg13", "vgg8", -2.0)):
            for t, acc in enumerate(accs_s):
                _write_run(f"{root}/students/models/S:{s_model}_T:{t_model}_cifar100_{d}_r:{c}_a:{dv}_b:{b}_{t}",
                           {"model_s": s_model, "model_t": t_model, "dataset": "cifar100", "distill": d,
                            "kd_mode": "offline", "trial": str(t), "cls": c, "div": dv, "beta": b,
                            "best_acc": acc + shift + 1.0, "last_acc": acc + shift, "last_epoch": 240})
    # an ablation variant with only metrics.jsonl accuracies in its summary, one trial
    _write_run(f"{root}/students/models/S:resnet8x4_T:resnet32x4_cifar100_cka_group_r:1.0_a:1.0_b:1.0_pool-0_0",
               {"model_s": "resnet8x4", "model_t": "resnet32x4", "dataset": "cifar100", "distill": "cka_group",
                "kd_mode": "offline", "trial": "pool-0_0", "cls": 1.0, "div": 1.0, "beta": 1.0},
               [{"epoch": 1, "test_acc": 50.0}, {"epoch": 2, "test_acc": 77.0}, {"epoch": 3, "test_acc": 76.5}])
    # unfinished (no summary), another dataset, an online run
    _write_run(f"{root}/students/models/S:vgg8_T:vgg13_cifar100_pkt_r:1.0_a:0.0_b:30000.0_0", None,
               [{"epoch": 1, "test_acc": 10.0}])
    _write_run(f"{root}/students/models/S:vgg8_T:vgg13_cifar10_kd_r:0.1_a:0.9_b:0.0_0",
               {"model_s": "vgg8", "model_t": "vgg13", "dataset": "cifar10", "distill": "kd", "trial": "0",
                "cls": 0.1, "div": 0.9, "beta": 0.0, "best_acc": 90.0, "last_acc": 90.0})
    _write_run(f"{root}/students/models/S:vgg8_T:vgg13_cifar100_kd-online_r:1.0_a:1.0_b:0.0_0",
               {"model_s": "vgg8", "model_t": "vgg13", "dataset": "cifar100", "distill": "kd", "kd_mode": "online",
                "trial": "0", "cls": 1.0, "div": 1.0, "beta": 0.0, "best_acc": 71.0, "last_acc": 70.0,
                "last_epoch": 120})


def _cells(md: str) -> dict:
    """{row name: [cell per column]} of the markdown table, plus '__header__'."""
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    out = {"__header__": [c.strip() for c in rows[0].strip("|").split("|")]}
    for ln in rows[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_summarize_means_stds_layout_and_published(tmp_path):
    root = str(tmp_path / "save")
    _fake_save(root)
    out = tmp_path / "table.md"
    assert summarize.main(["--save_dir", root, "--out", str(out)]) == 0
    md = out.read_text()
    cells = _cells(md)
    assert cells["__header__"] == ["method", "resnet32x4→resnet8x4", "vgg13→vgg8", "our protocol",
                                   "published protocol"]
    names = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert names == ["Teacher", "Student", "KD (-c 0.1 -d 0.9 -b 0)", "KD (-c 1 -d 1 -b 0)", "KD (online)", "CRD",
                     "CKA-group (ours)", "CKA-group (ours) [pool-0]"]
    assert "**last-epoch** mean ± std / **best-epoch** mean ± std" in md
    # resnet8x4 vanilla: last 72.0, 72.4, 73.1 -> mean 72.5, sample std 0.5568; best = +0.5
    assert cells["Student"][0].startswith("72.50±0.56 / 73.00±0.56 · RepD 72.50; SemCKD 73.09±0.30; SimKD 73.09")
    assert cells["Teacher"][1].startswith("74.37±0.47 / 74.87±0.47 · RepD 74.64; SemCKD 74.64")
    # RepDistiller's KD protocol gets RepD's number only, SemCKD's protocol SemCKD's and SimKD's
    assert cells["KD (-c 0.1 -d 0.9 -b 0)"] == ["73.50±0.50 / 74.50±0.50 · RepD 73.33",
                                                "71.50±0.50 / 72.50±0.50 · RepD 72.98",
                                                "240 ep · no extra aug · 3 runs · last & best epoch",
                                                "RepD: 240 ep · no extra aug · ? runs · last epoch"]
    assert cells["KD (-c 1 -d 1 -b 0)"][0] == "74.20±0.20 / 75.20±0.20 · SemCKD 74.42±0.05; SimKD 74.42"
    assert cells["CRD"][0] == "75.30±0.30 / 76.30±0.30 · RepD 75.51"
    assert cells["CKA-group (ours)"][0] == "76.10±0.17 / 77.10±0.17"
    # accuracies from metrics.jsonl (best 77.0, last 76.5), one trial: no std, n shown
    assert cells["CKA-group (ours) [pool-0]"][:3] == ["76.50 / 77.00 (n=1)", "–",
                                                      "3 ep · no extra aug · 1 run · last & best epoch"]
    assert cells["KD (online)"] == ["–", "70.00 / 71.00 (n=1)",
                                    "120 ep · no extra aug · 1 run · last & best epoch", "–"]
    assert "1 run folder(s) without a finished summary.json were left out" in md
    # other datasets are separate tables
    md10 = summarize.render_markdown(summarize.build_table(summarize.scan(root, "cifar10")), "cifar10")
    assert _cells(md10)["KD"][0] == "90.00 / 90.00 · RepD 72.98"


def test_summarize_statistics_and_trials():
    assert summarize.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert summarize.mean_std([5.0]) == (5.0, None, 1)
    assert summarize.split_trial("2") == ("", "2")
    assert summarize.split_trial("mixup_0") == ("mixup", "0")
    assert summarize.split_trial("grouping-uniform_12") == ("grouping-uniform", "12")
    assert summarize.method_label({"distill": "crd", "div": 1.0}) == "CRD+KD"
    assert summarize.method_label({"distill": "kd", "kd_mode": "self"}) == "KD (self)"


def test_summarize_mixed_epochs_pairs_option_and_errors(tmp_path, capsys):
    root = str(tmp_path / "save")
    for t, (acc, ep) in enumerate(((70.0, 240), (72.0, 1))):
        _write_run(f"{root}/students/models/S:vgg8_T:vgg13_cifar100_kd_r:0.1_a:0.9_b:0.0_{t}",
                   {"model_s": "vgg8", "model_t": "vgg13", "dataset": "cifar100", "distill": "kd", "trial": str(t),
                    "cls": 0.1, "div": 0.9, "beta": 0.0, "best_acc": acc, "last_acc": acc, "last_epoch": ep,
                    "teacher_acc": 74.64})
    assert summarize.main(["--save_dir", root, "--pairs", "vgg13:vgg8,resnet56:resnet20", "--no_published"]) == 0
    md = capsys.readouterr().out
    cells = _cells(md)
    assert cells["__header__"] == ["method", "vgg13→vgg8", "resnet56→resnet20", "our protocol"]
    assert cells["KD"] == ["71.00±1.41 / 71.00±1.41 *", "–",
                           "1/240 ep · no extra aug · 2 runs · last & best epoch"]
    assert "runs of [1, 240] epochs" in md
    # no vanilla teacher run here (e.g. RepDistiller's checkpoint): the accuracy the student runs measured
    assert cells["Teacher"] == ["74.64 (loaded teacher, as evaluated by the student runs)", "–", "loaded teacher"]
    assert "2 trials unless" in md
    assert "· RepD" not in md and "After '·'" not in md
    assert summarize.main(["--save_dir", str(tmp_path / "nothing")]) == 2
    os.makedirs(tmp_path / "empty")
    assert summarize.main(["--save_dir", str(tmp_path / "empty")]) == 1


def test_published_numbers_typed_from_the_anchors():
    def look(*args):
        return [tuple(found[:4]) for found in published.lookup(*args)]
    assert look("KD", "resnet32x4", "resnet8x4", (0.1, 0.9, 0.0)) == [("RepD", 73.33, None, False)]
    assert look("FSP", "wrn_40_2", "wrn_40_1", (1.0, 0.0, 50.0)) == []  # N/A
    assert look("FSP", "resnet56", "resnet20", (1.0, 0.0, 50.0)) == [("RepD", 69.95, None, False)]
    assert look("AT", "vgg13", "MobileNetV2", (1.0, 0.0, 1000.0)) == [("RepD", 59.40, None, False)]
    assert look("SemCKD", "vgg13", "vgg8", (1.0, 1.0, 400.0)) == [("SemCKD", 74.43, 0.25, False)]
    assert look("SimKD", "resnet32x4", "resnet8x4", (0.0, 0.0, 1.0)) == [("SimKD", 78.08, None, False)]
    assert look("CRD+KD", "vgg13", "vgg8", (1.0, 1.0, 0.8)) == [("RepD", 74.29, None, True)]
    crd = look("CRD", "ResNet34_imagenet", "ResNet18_imagenet", (1.0, 1.0, 0.8))
    assert len(crd) == 1 and crd[0][0] == "CRD paper" and abs(crd[0][1] - 71.17) < 1e-9 and crd[0][3]
    student = look("Student", "resnet32x4", "ShuffleV2", None)
    assert [(s, m) for s, m, _, _ in student] == [("RepD", 71.82), ("SemCKD", 72.60)]
    assert len(published.pairs_of("repd")) == 13 and len(published.pairs_of("semckd")) == 7


def _student(root, distill, trial, acc, params=None, pair=("resnet32x4", "resnet8x4"), dataset="cifar100",
             weights=(1.0, 0.0, 1.0), status="finished"):
    """A generated student run folder: summary.json (as the loop writes it) and parameters.json."""
    (t, s), (c, dv, b) = pair, weights
    folder = f"{root}/students/models/S:{s}_T:{t}_{dataset}_{distill}_r:{c}_a:{dv}_b:{b}_{trial}"
    summary = {"model_s": s, "model_t": t, "dataset": dataset, "distill": distill, "kd_mode": "offline",
               "trial": str(trial), "cls": c, "div": dv, "beta": b, "status": status,
               "best_acc": None if acc is None else acc + 1.0, "last_acc": acc, "last_epoch": 240}
    _write_run(folder, summary)
    with open(os.path.join(folder, "parameters.json"), "w") as f:
        json.dump({"epochs": 240, "strong_aug": "none", "logit_stand": False, "optimizer": "sgd", **(params or {})},
                  f)


def test_summarize_loop_option_rows_protocols_and_diverged_runs(tmp_path):
    root = str(tmp_path / "save")
    for t in range(2):
        _student(root, "kd", t, 76.0 + t, {"logit_stand": True}, weights=(0.1, 9.0, 0.0))
        _student(root, "kd", t, 74.0, {"optimizer": "dot"}, weights=(0.1, 0.9, 0.0))
        _student(root, "ctkd", t, 73.0, weights=(0.1, 0.9, 0.0))
        _student(root, "mlkd", t, 77.0, {"strong_aug": "randaugment"}, weights=(0.1, 0.9, 0.0))
        _student(root, "dkd", t, 75.0 + t)
    _student(root, "mlkd", 9, 75.5, weights=(0.1, 0.9, 0.0))                     # the same method, one view
    _student(root, "dkd", 2, 12.0, status="diverged")                             # its number must not count
    for t in range(2):                                                             # every run of the cell diverged
        _student(root, "dkd", t, None if t else 30.0, {"logit_stand": True}, weights=(1.0, 0.0, 9.0),
                 status="diverged")
    _student(root, "dist", 0, 71.9, pair=("ResNet34_imagenet", "ResNet18_imagenet"), dataset="imagenet",
             weights=(1.0, 0.0, 2.0))
    md = summarize.render_markdown(summarize.build_table(summarize.scan(root, "cifar100")), "cifar100")
    cells = _cells(md)
    names = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert names == ["Teacher", "Student", "KD+LS", "KD+DOT", "DKD", "DKD+LS", "MLKD (no extra aug)",
                     "MLKD (+RandAugment view)", "KD+CTKD"]
    assert cells["KD+LS"] == ["76.50±0.71 / 77.50±0.71 · LS 76.62",
                              "240 ep · no extra aug · 2 runs · last & best epoch · LS",
                              "LS: 240 ep · no extra aug · mean of ? runs · ? epoch"]
    assert cells["KD+DOT"][0] == "74.00±0.00 / 75.00±0.00 · mdistiller 75.12"
    assert cells["KD+DOT"][1].endswith("· DOT")
    assert cells["KD+CTKD"][0] == "73.00±0.00 / 74.00±0.00 · LS 73.39"
    # a diverged run is counted, never averaged; a cell of diverged runs says so
    assert cells["DKD"] == ["75.50±0.71 / 76.50±0.71 + 1 diverged · mdistiller 76.32",
                            "240 ep · no extra aug · 2 runs · last & best epoch",
                            "mdistiller: 240 ep · no extra aug · mean of 5 · best epoch"]
    assert cells["DKD+LS"][0] == "diverged (n=2) · LS 77.01"
    assert cells["DKD+LS"][1] == "240 ep · no extra aug · no finished run · last & best epoch · LS"
    # MLKD's published numbers ran a strong second view and 480 epochs: both protocols side by side
    assert cells["MLKD (+RandAugment view)"][1:] == ["240 ep · +RandAugment view · 2 runs · last & best epoch",
                                                     "LS: 480 ep · +RandAugment view · mean of ? runs · ? epoch"]
    assert cells["MLKD (no extra aug)"][0] == "75.50 / 76.50 (n=1) · LS 77.08"
    assert "Published numbers read from: " in md and "LS = logit-standardization-KD README, table 1" in md
    # ImageNet: the sources' own teachers and students beside ours, DIST_KD's protocol
    md = summarize.render_markdown(summarize.build_table(summarize.scan(root, "imagenet")), "imagenet")
    cells = _cells(md)
    assert cells["__header__"][1] == "ResNet34_imagenet→ResNet18_imagenet"
    assert cells["DIST"] == ["71.90 / 72.90 · DIST_KD 72.07", "240 ep · no extra aug · 1 run · last & best epoch",
                             "DIST_KD: 100 ep · no extra aug · ? runs · ? epoch"]


def test_published_modern_numbers_and_their_protocols():
    """The numbers issue 10 asks for, each from its source, and what each source says of its protocol."""
    r8, w16, v8, im = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
                       ("ResNet34_imagenet", "ResNet18_imagenet"))
    expected = {"DKD": (76.32, 76.23, 74.68, 71.70), "KD+LS": (76.62, 76.11, 74.36, 71.42),
                "DKD+LS": (77.01, 76.39, 74.81, None), "MLKD": (77.08, 76.63, 75.18, None),
                "MLKD+LS": (78.28, 76.95, 75.22, None), "DIST": (76.31, None, None, 72.07),
                "ReviewKD": (None, None, None, 71.61), "RCKA": (76.11, None, None, None),
                "KD+CTKD": (73.39, 75.45, 73.52, 71.32), "KD+DOT": (75.12, None, 73.77, 71.72)}
    for label, numbers in expected.items():
        for pair, want in zip((r8, w16, v8, im), numbers):
            got = [f.mean for f in published.lookup(label, *pair, (1.0, 0.0, 1.0))]
            assert got == ([] if want is None else [pytest.approx(want)]), (label, pair)
    dist = published.lookup("DIST", *r8, (1.0, 0.0, 2.0))[0]
    assert dist.std == pytest.approx(0.19) and dist.source == "DIST_KD"
    assert [f.source for f in published.lookup("KD", *im, (0.1, 0.9, 0.0))] == ["CRD paper", "mdistiller", "DIST_KD",
                                                                                 "CTKD"]
    # protocols: only what the sources state
    proto = {name: src.protocol for name, src in published.SOURCES.items()}
    assert proto["dkd"] == published.Protocol("240", "no extra aug", "mean of 5", "best epoch")
    assert proto["dkd_imagenet"].runs == "mean of 3" and proto["repd"].pick == "last epoch"
    assert proto["ls_mlkd"].epochs == "480" and proto["ls_mlkd"].augment == "+RandAugment view"
    assert proto["ls"].epochs == "240" and proto["ls"].augment == "no extra aug"
    assert proto["rcka"] == published.Protocol()
    assert published.lookup("RCKA", *r8, (1.0, 0.0, 1.0))[0].recalled


# ---- seed experiments (--smoke) -----------------------------------------------------------------------

def run_seed(script: str, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *map(str, args)], cwd=ROOT,
                       env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _results(save_dir, name) -> dict:
    with open(os.path.join(save_dir, f"{name}.json")) as f:
        return json.load(f)


def _summary(folder) -> dict:
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)


def _params(folder) -> dict:
    with open(os.path.join(folder, "parameters.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("script,dataset", [("seed_mnist_response_vs_feature.py", "mnist"),
                                            ("seed_vgg_cifar10.py", "cifar10"),
                                            ("seed_resnet_attention.py", "cifar10"),
                                            ("seed_offline_online_self.py", "cifar100")])
def test_seed_scripts_say_where_the_dataset_goes(tmp_path, script, dataset):
    r = run_seed(script, "--smoke", "--data_folder", tmp_path / "none", "--save_dir", tmp_path, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {dataset} is not in --data_folder")
    assert "put" in lines[0]


def test_seed_scripts_default_to_the_seeds_models():
    import seed_mnist_response_vs_feature as s000
    import seed_offline_online_self as s003
    import seed_resnet_attention as s002
    import seed_vgg_cifar10 as s004
    a = s000.parse([])
    assert (a.dataset, a.model_t, a.model_s, a.teacher_epochs, a.epochs) == ("mnist", "cnn_mnist_teacher",
                                                                           "cnn_mnist_student", 8, 3)
    a = s002.parse([])
    assert (a.model_t, a.model_s) == ("ResNet50", "ResNet18")
    a = s003.parse([])
    assert (a.model_t, a.model_s, a.epochs) == ("ResNet50", "ResNet18", 200)
    a = s004.parse([])
    assert (a.model_t, a.model_s, a.epochs) == ("VGGCifar9", "VGGCifar5", 5)
    import seed_common
    for s in (s000, s004):  # five paired trials; one in CI's smoke mode
        assert seed_common.parse_trials(s.parse([])) == [1, 2, 3, 4, 5]
        assert seed_common.parse_trials(s.parse(["--smoke"])) == [1]
        assert seed_common.parse_trials(s.parse(["--smoke", "--trials", "3,7"])) == [3, 7]


def _small_fashion(tmp_path) -> tuple:
    """A Fashion-MNIST subset (real images) when Debian's copy exists, else generated MNIST files."""
    folder = str(tmp_path / "data")
    if os.path.isdir(FASHION):
        from dataset.mnist import FILES, _find, read_idx
        arrays = [read_idx(_find(FASHION, f)) for f in FILES]
        fakedata.make_idx(folder, train_images=arrays[0][:300], train_labels=arrays[1][:300],
                          test_images=arrays[2][:200], test_labels=arrays[3][:200])
        return folder, "fashionmnist"
    fakedata.make_idx(folder, n_train=300, n_test=200)
    return folder, "mnist"


def _rows(res: dict, trial: int) -> dict:
    """{label: that trial's run record} of a grouped seed script's results."""
    return {label: row["runs"][str(trial)] for label, row in res["rows"].items()}


def _check_groups(res: dict, save, trials: list, reference: str) -> None:
    """What every grouped seed script promises: per trial one group, every row with --data_seed t and
    --seed t (its own folder), one initialisation per trial (and another in the next), the teacher trained
    once, and each row's paired differences to the reference taken trial by trial from the runs' summaries."""
    import paired_table
    assert res["trials"] == trials and res["reference"] == reference and res["same_init"]
    for t in trials:
        sums = res["inits"][str(t)]
        assert len(sums) == len(res["rows"]) and len(set(sums)) == 1
        for label, run in _rows(res, t).items():
            p = _params(run["folder"])
            assert (p["seed"], p["data_seed"], p["trial"]) == (t, t, f"{paired_table.slug(label)}_{t}")
    assert len({res["inits"][str(t)][0] for t in trials}) == len(trials)  # trials differ in initialisation
    assert os.listdir(os.path.join(save, "teachers", "models")) == [f"{res['teacher']}_vanilla_{res['dataset']}_trial_0"]
    ref = {t: _summary(_rows(res, t)[reference]["folder"])["last_acc"] for t in trials}
    for label, row in res["rows"].items():
        last = [_summary(row["runs"][str(t)]["folder"])["last_acc"] for t in trials]
        assert row["last"] == last and row["trials"] == trials
        curves = [row["runs"][str(t)]["test_acc"] for t in trials]
        assert row["curve"] == pytest.approx([sum(c[e] for c in curves) / len(curves) for e in range(len(curves[0]))])
        if label != reference:
            diffs = [a - ref[t] for a, t in zip(last, trials)]
            assert row["paired"]["diffs"] == pytest.approx(diffs) and row["paired"]["n"] == len(trials)
            assert row["paired"]["mean"] == pytest.approx(sum(diffs) / len(diffs))


def test_seed_mnist_smoke(tmp_path):
    data, name = _small_fashion(tmp_path)
    save = tmp_path / "runs"
    r = run_seed("seed_mnist_response_vs_feature.py", "--smoke", "--dataset", name, "--data_folder", data,
                 "--save_dir", save, "--device", "cpu", "--trials", "1,2")
    res = _results(save, "seed_mnist")
    assert list(res["rows"]) == ["Label only", "Output distillation (KD, T=3)",
                                 "Feature distillation (normalised regressor)"]
    assert res["teacher_acc"] is not None and r.stdout.count("(one group)") == 2
    _check_groups(res, str(save), [1, 2], "Label only")
    runs = _rows(res, 2)
    assert all(len(v["test_acc"]) == 1 for v in runs.values())
    base = _summary(runs["Label only"]["folder"])  # the label-only student: no distillation term
    assert (base["distill"], base["cls"], base["div"], base["beta"]) == ("kd", 1.0, 0.0, 0.0)
    # the seed's weighting: alpha = 0.7 weighs the CE term
    kd = _summary(runs["Output distillation (KD, T=3)"]["folder"])
    assert (kd["distill"], kd["cls"], kd["div"], kd["beta"]) == ("kd", 0.7, 0.3, 0.0)
    assert _params(runs["Output distillation (KD, T=3)"]["folder"])["kd_T"] == 3.0
    feat = _params(runs["Feature distillation (normalised regressor)"]["folder"])
    assert (feat["distill"], feat["hint_layer"], feat["hint_regressor"], feat["hint_norm"], feat["init_epochs"],
            feat["cls"], feat["div"], feat["beta"]) == ("hint", -1, "linear", True, 0, 0.7, 0.0, 0.3)
    assert (feat["optimizer"], feat["learning_rate"], feat["train_subset"], feat["epochs"]) == ("adam", 1e-3, 200, 1)
    assert feat["no_augment"] and _params(runs["Label only"]["folder"])["no_augment"]  # as the seed
    assert "| **Label only** |" in r.stdout and "| Output distillation (KD, T=3) |" in r.stdout
    try:
        import matplotlib  # noqa: F401
        assert res["plot"] and os.path.getsize(res["plot"]) > 1000
    except ImportError:
        assert res["plot"] is None and "matplotlib is not installed" in r.stdout


def test_seed_group_scripts_refuse_bad_trials(tmp_path):
    for script in ("seed_mnist_response_vs_feature.py", "seed_vgg_cifar10.py"):
        for bad in ("1,x", "1,1", "-1"):
            r = run_seed(script, "--smoke", "--trials", bad, "--data_folder", tmp_path, "--save_dir", tmp_path,
                         check=False)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --trials"), r.stderr


@pytest.fixture(scope="module")
def cifar_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.make_cifar(str(root / "c10"), "cifar10", n_train=200, n_test=40)
    fakedata.make_cifar(str(root / "c100"), "cifar100", n_train=200, n_test=40)
    return str(root / "c10"), str(root / "c100")


def test_seed_vgg_cifar10_smoke(tmp_path, cifar_folders):
    save = tmp_path / "runs"
    args = ["--smoke", "--data_folder", cifar_folders[0], "--save_dir", save, "--model_t", "resnet14",
            "--model_s", "resnet8", "--device", "cpu"]
    run_seed("seed_vgg_cifar10.py", *args)
    res = _results(save, "seed_vgg_cifar10")
    assert list(res["rows"]) == ["CE", "KD (T=10, 0.5/0.5)", "Cosine loss (0.5/0.5)", "Regressor + MSE (0.5/0.5)"]
    _check_groups(res, str(save), [1], "CE")  # --smoke: one trial
    runs = _rows(res, 1)
    ce = _params(runs["CE"]["folder"])
    assert (ce["distill"], ce["cls"], ce["div"], ce["beta"], ce["optimizer"]) == ("kd", 1.0, 0.0, 0.0, "adam")
    kd = _params(runs["KD (T=10, 0.5/0.5)"]["folder"])
    assert (kd["cls"], kd["div"], kd["kd_T"], kd["optimizer"], kd["learning_rate"], kd["lr_schedule"],
            kd["weight_decay"], kd["no_augment"]) == (0.5, 0.5, 10.0, "adam", 0.01, "cosine", 0.0, True)
    hint = _params(runs["Regressor + MSE (0.5/0.5)"]["folder"])
    assert (hint["hint_layer"], hint["hint_regressor"], hint["init_epochs"], hint["cls"], hint["beta"]) == (
        -2, "convbn", 0, 0.5, 0.5)
    assert _summary(runs["Cosine loss (0.5/0.5)"]["folder"])["distill"] == "cosine"
    # --reuse: nothing is trained again, the same table, the initialisations checked again
    r = run_seed("seed_vgg_cifar10.py", *args, "--reuse")
    assert "epoch 1/1" not in r.stdout and "--resume_all" in r.stdout
    again = _results(save, "seed_vgg_cifar10")
    assert again["rows"] == res["rows"] and again["inits"] == res["inits"]


def test_seed_vgg_protocol_runs_on_fashionmnist(tmp_path):
    """--dataset fashionmnist: the CIFAR-10 seeds' protocols on the dataset installable offline."""
    folder = str(tmp_path / "data")
    fakedata.make_idx(folder, n_train=300, n_test=200)
    save = tmp_path / "runs"
    run_seed("seed_vgg_cifar10.py", "--smoke", "--dataset", "fashionmnist", "--data_folder", folder,
             "--save_dir", save, "--model_t", "resnet14", "--model_s", "resnet8", "--device", "cpu")
    runs = _rows(_results(save, "seed_vgg_cifar10"), 1)
    assert len(runs) == 4 and {_params(v["folder"])["dataset"] for v in runs.values()} == {"fashionmnist"}


def test_seed_resnet_attention_smoke(tmp_path, cifar_folders):
    save = tmp_path / "runs"
    r = run_seed("seed_resnet_attention.py", "--smoke", "--data_folder", cifar_folders[0], "--save_dir", save,
                 "--model_t", "resnet14", "--model_s", "resnet8", "--device", "cpu")
    runs = _results(save, "seed_resnet_attention")["runs"]
    assert list(runs) == ["Teacher from scratch", "Student from scratch", "Response-based student (KD)",
                          "Feature-based student (attention)"]
    assert all(v["test_loss"] is not None and v["last_acc"] is not None for v in runs.values())
    kd = _params(runs["Response-based student (KD)"]["folder"])
    assert (kd["cls"], kd["div"], kd["kd_T"]) == (0.3, 0.7, 4.0)  # alpha = 0.7 weighs the KD term
    at = _params(runs["Feature-based student (attention)"]["folder"])
    assert (at["distill"], at["at_map"], at["cls"], at["div"], at["beta"]) == ("attention", "mean", 1.0, 0.0, 1000.0)
    assert "| loss (test, last epoch) |" in r.stdout


def test_seed_offline_online_self_smoke(tmp_path, cifar_folders):
    save = tmp_path / "runs"
    run_seed("seed_offline_online_self.py", "--smoke", "--data_folder", cifar_folders[1], "--save_dir", save,
             "--model_t", "resnet14", "--model_s", "resnet8", "--device", "cpu")
    res = _results(save, "seed_offline_online_self")
    runs = res["runs"]
    assert len(runs) == 8 and len({v["init"] for v in runs.values()}) == 1
    modes = {}
    for label, v in runs.items():
        p = _params(v["folder"])
        modes[label] = (p.get("kd_mode", "vanilla"), p["mixup"], p["lr_schedule"])
    assert modes["Baseline (labels only) | no mixup"] == ("vanilla", 0.0, "cosine")
    assert modes["Offline KD (resnet14 teacher) | mixup"] == ("offline", 1.0, "cosine")
    assert modes["Online KD / DML (resnet14 peer) | no mixup"] == ("online", 0.0, "cosine")
    assert modes["Self-distillation (EMA teacher) | mixup"] == ("self", 1.0, "cosine")
    assert _params(runs["Online KD / DML (resnet14 peer) | mixup"]["folder"])["model_t"] == "resnet14"
