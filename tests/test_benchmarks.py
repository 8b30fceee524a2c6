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
