"""benchmarks/bench_step.py --smoke runs end to end and writes the JSON it documents.

Structure only: timings on a shared CI machine mean nothing, so no number is compared with a threshold.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("kd", "crd", "semckd", "cka_group")
PHASES = {"loader", "teacher_forward", "student_forward", "losses", "backward", "optimizer", "distiller_update"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_step.py"), "--smoke", "--json", str(out),
                           "--breakdown", "--breakdown_configs", "kd/default,cka_group/default"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_meta(smoke):
    result, _ = smoke
    meta = result["meta"]
    assert meta["smoke"] is True and meta["device"] == "cpu"
    for k in ("date", "torch", "cpu", "cpu_count", "torch_threads", "args", "wall_s"):
        assert k in meta, k
    assert set(meta["compile"]) == {"enabled", "why"} and meta["compile"]["why"]
    assert meta["compile"]["enabled"] is False  # --smoke never compiles (minutes)


def test_step_rows(smoke):
    result, _ = smoke
    rows = {r["name"]: r for r in result["steps"]}
    expected = {"teacher_train/off", "teacher_train/on", "kd/amp", "kd/channels_last"} | {
        f"{m}/{v}" for m in METHODS for v in ("default", "off", "on")}
    assert set(rows) == expected
    for name, r in rows.items():
        assert set(r["paths"]) == {"amp", "channels_last", "inference_mode", "compile"}, name
        assert _positive(r["img_per_s"]) and _positive(r["step_ms"]) and _positive(r["img_per_cpu_s"]), name
        assert len(r["windows_wall_s"]) == len(r["windows_cpu_s"]) == result["meta"]["args"]["repeats"]
    assert rows["kd/off"]["paths"]["inference_mode"] is False
    assert rows["kd/default"]["paths"] == {"amp": False, "channels_last": False, "inference_mode": True,
                                           "compile": False}
    assert rows["cka_group/on"]["paths"]["amp"] and rows["cka_group/on"]["paths"]["channels_last"]


def test_ratios(smoke):
    result, stdout = smoke
    for ratios in (result["ratios"], result["ratios_cpu_time"]):
        for m in ("crd", "semckd", "cka_group"):
            assert _positive(ratios[f"{m}/kd step time"])
        for k in ("amp/fp32 speed-up (kd)", "channels_last/NCHW speed-up (kd)",
                  "inference_mode/no_grad teacher speed-up (kd)"):
            assert _positive(ratios[k]), k
        for m in ("teacher_train",) + METHODS:
            assert _positive(ratios[f"speed paths on/off ({m})"])
    assert _positive(result["ratios"]["tensor/PIL loader per core"])
    assert "compile/eager speed-up (kd)" not in result["ratios"]  # not measured in --smoke
    assert "ratio cka_group/kd step time" in stdout


def test_loader_rows(smoke):
    result, _ = smoke
    rows = {r["name"]: r for r in result["loader"]}
    assert {"torchvision_pil/w0", "ours_tensor"} <= set(rows)
    assert any(n.startswith("ours_torch/") for n in rows)
    for r in rows.values():
        assert _positive(r["img_per_s"]) and _positive(r["img_per_s_per_core"]) and r["cores"] >= 1


def test_breakdown(smoke):
    result, _ = smoke
    assert set(result["breakdown"]) == {"kd/default", "cka_group/default"}
    for bd in result["breakdown"].values():
        assert set(bd["ms_per_step"]) == PHASES
        assert math.isclose(sum(bd["share"].values()), 1.0, rel_tol=1e-6)
        assert _positive(bd["total_ms"]) and _positive(bd["img_per_s"])


def test_targets_are_recorded(smoke):
    result, _ = smoke
    assert any("cka_group/kd" in k for k in result["targets"])
    assert any("crd/kd" in k for k in result["targets"])


def test_bench_group_smoke(tmp_path):
    """benchmarks/bench_group.py --smoke: a group of 2 against 1, the ideal from the teacher's share, JSON."""
    out = tmp_path / "group.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_group.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.load(open(out))
    assert [r["K"] for r in result["rows"]] == [1, 2] and _positive(result["teacher_s_per_batch"])
    one, two = result["rows"]
    assert one["wall"]["ratio"] == pytest.approx(1.0) and one["wall"]["ideal"] == pytest.approx(1.0)
    for key in ("wall", "cpu"):
        r = two[key]
        assert _positive(r["ratio"]) and 1.0 < r["ideal"] < 2.0 and 0 < r["teacher_share"] < 1
        assert r["fraction_of_ideal"] == pytest.approx(r["ratio"] / r["ideal"])
    assert "group/separate" in proc.stdout


def test_gpu_check_dry_run_reports_every_step(tmp_path):
    """benchmarks/gpu_check.sh --dry-run (CUDA hidden, minimal sizes) runs every step of the GPU check and
    writes its report, so the script is known to start when a GPU is lent; then the report of the same
    folder with one step timed out, one failed and one whose output is gone says so, step by step."""
    out = tmp_path / "gpu_check"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join("benchmarks", "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.load(open(out / "report.json"))
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["pytest", "bench_step", "bench_compile", "torchrun", "bench_group"]
    for s in steps.values():
        assert s["status"] == "passed", (s["name"], s["reason"], s.get("log_tail"))
        assert s["returncode"] == 0 and 0 < s["seconds"] <= s["timeout_s"] and s["command"].strip()
        assert os.path.isfile(out / s["log"])
    meta = report["meta"]
    assert report["dry_run"] and report["all_passed"] and meta["cuda_available"] is False
    assert meta["torch"] and meta["device"].startswith("cpu") and meta["date"]
    tests = steps["pytest"]["figures"]
    assert tests["counts"] == {"skipped": tests["collected"]} and tests["collected"] >= 8
    assert all(t["test"].startswith("test_cuda::") for t in tests["tests"])
    assert "kd/on" in steps["bench_compile"]["figures"]["rows"] and len(steps["bench_step"]["figures"]["rows"]) == 10
    run = steps["torchrun"]["figures"]
    assert (run["status"], run["dist_backend"], run["dali"], run["world_size"], run["epochs"]) == \
        ("finished", "gloo", "cpu", 1, 1)
    assert [r["K"] for r in steps["bench_group"]["figures"]["rows"]] == [1, 2]
    md = (out / "report.md").read_text()
    assert "**5/5 steps passed.**" in md and md.count("| passed |") == 5 and "(dry run, CPU)" in md

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check
    (out / "steps" / "bench_group.status").write_text("rc=124 seconds=120.0 timeout=120\n")
    (out / "steps" / "torchrun.status").write_text("rc=1 seconds=3.0 timeout=150\n")
    (out / "steps" / "torchrun.log").write_text("Traceback (most recent call last):\nerror: --dali gpu needs CUDA\n")
    os.remove(out / "bench_step.json")
    broken = gpu_check.write_report(str(out), dry=True, started=None)
    status = {s["name"]: (s["status"], s["reason"]) for s in broken["steps"]}
    assert status["bench_group"][0] == "timed_out" and "120 s timeout" in status["bench_group"][1]
    assert status["torchrun"] == ("failed", "exit code 1: error: --dali gpu needs CUDA")
    assert status["bench_step"][0] == "failed" and "bench_step.json" in status["bench_step"][1]
    assert status["pytest"][0] == status["bench_compile"][0] == "passed" and not broken["all_passed"]
    assert "**2/5 steps passed.**" in (out / "report.md").read_text()
