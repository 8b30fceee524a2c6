"""benchmarks/gpu_check.sh's helper: the machine's description, the generated data, and the report.

    python benchmarks/gpu_check.py env OUT/env.json [--dry-run]    # device, versions, commit; exit 3 without CUDA
    python benchmarks/gpu_check.py data FOLDER --n_train N --n_test M   # CIFAR-100-format files (tests/fakedata)
    python benchmarks/gpu_check.py report OUT [--dry-run]           # OUT/report.json + OUT/report.md

The report reads what the script left in OUT: ``steps/<name>.status`` (``rc=.. seconds=.. timeout=..``),
``steps/<name>.log``, pytest's junit XML, the benchmarks' JSON files and the torchrun student's summary,
metrics and parameters. A step passed when its command exited 0 *and* its output holds what it should
(every test collected and, in the dry run, skipped; every benchmark row; a finished run); it timed out
when ``timeout`` stopped it (exit 124 or 137); otherwise it failed, with the reason. Exit code: 0 when
every step passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, what it runs on a GPU, what it runs in the dry run (the report's first column); the script's order
STEPS = (("pytest", "pytest -m cuda", "pytest --collect-only -m cuda, then run (skipped)"),
         ("bench_step", "bench_step.py rows, eager", "bench_step.py --smoke rows"),
         ("bench_compile", "bench_step.py kd/on, compile reduce-overhead", "bench_step.py --smoke kd/on, compile off"),
         ("torchrun", "torchrun 1 process, NCCL, --dali gpu", "torchrun 1 process, gloo, --dali cpu"),
         ("bench_group", "bench_group.py K = 1, 8, 17", "bench_group.py --smoke K = 1, 2"))
BENCH_ROWS = ("teacher_train/off", "teacher_train/on", "kd/default", "kd/on", "kd/off", "kd/amp", "kd/channels_last",
              "crd/default", "cka_group/default", "semckd/default")
# bench_step's targets (docs/performance.md), stated for an H100; (figure, threshold, direction)
TARGETS = (("kd/on img/s, eager (bf16 + channels_last + inference_mode + GPU loader)", 20000, ">="),
           ("kd/on img/s, compile reduce-overhead", 40000, ">="),
           ("speed paths on/off (kd)", 2.0, ">="),
           ("cka_group/kd step time", 1.2, "<="),
           ("crd/kd step time", 1.5, "<="))


# ---- env ----------------------------------------------------------------------------------------

def _version(*dists) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _run(cmd) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(dry: bool) -> dict:
    import torch

    dali = [d.metadata["Name"] for d in importlib.metadata.distributions()
            if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")]
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry, "host": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "triton": _version("triton"),
            "dali": f"{dali[0]} {_version(dali[0])}" if dali else None, "cpu_count": os.cpu_count(),
            "cuda_available": torch.cuda.is_available(), "commit": _run(["git", "rev-parse", "--short", "HEAD"]),
            "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    memory_gib=round(p.total_memory / 2 ** 30, 1), gpus=torch.cuda.device_count(),
                    driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
        try:  # a tuple in recent torch, an int in old ones
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except (AttributeError, RuntimeError):
            info["nccl"] = None
    else:
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        except OSError:
            cpu = None
        info["device"] = f"cpu ({cpu or platform.processor() or 'unknown'})"
    return info


# ---- data ---------------------------------------------------------------------------------------

def make_data(folder: str, n_train: int, n_test: int) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from fakedata import make_cifar
    make_cifar(folder, "cifar100", n_train=n_train, n_test=n_test, seed=0)
    print(f"CIFAR-100-format files ({n_train} train, {n_test} test images) in {folder}")


# ---- report -------------------------------------------------------------------------------------

class StepFailed(Exception):
    """The command exited 0 but its output is not what the step must produce."""


def _json(path):
    with open(path) as f:
        return json.load(f)


def _tail(path, n=15) -> list:
    try:
        with open(path, errors="replace") as f:
            return [ln.rstrip() for ln in f.readlines()[-n:]]
    except OSError:
        return []


def pytest_results(steps: str) -> list:
    """[(test id, outcome, message)] from the junit XML, else (a timeout kills pytest before it writes
    it) from the -v lines of the log."""
    xml = os.path.join(steps, "pytest.xml")
    out = []
    if os.path.isfile(xml):
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            outcome, msg = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    msg = (el.get("message") or "").strip().splitlines()[0][:300] if el.get("message") else ""
                    break
            out.append((name, outcome, msg))
        return out
    pat = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")
    for ln in _tail(os.path.join(steps, "pytest.log"), 10 ** 6):
        m = pat.match(ln)
        if m:
            out.append((m.group(1).split("/")[-1], m.group(2).lower(), "(from the log)"))
    return out


def check_pytest(out, steps, dry):
    results = pytest_results(steps)
    counts = {}
    for _, outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    figures = {"counts": counts, "tests": [{"test": n, "outcome": o, "message": m} for n, o, m in results]}
    if dry:
        with open(os.path.join(steps, "pytest.collect.txt")) as f:
            collected = [ln.strip() for ln in f if "::" in ln]
        figures["collected"] = len(collected)
        if not collected:
            raise StepFailed("no test marked cuda was collected")
        ran = [n for n, o, _ in results if o != "skipped"]
        if len(results) != len(collected) or ran:
            raise StepFailed(f"on the CPU all {len(collected)} collected cuda tests must be skipped; "
                             f"{len(results)} reported, not skipped: {ran[:3]}")
    elif not results:
        raise StepFailed("no test results (nothing collected?)")
    return figures


def check_bench_step(out, steps, dry, rows=BENCH_ROWS, name="bench_step.json"):
    result = _json(os.path.join(out, name))
    got = {r["name"]: r for r in result["steps"]}
    missing = [r for r in rows if r not in got]
    if missing:
        raise StepFailed(f"rows missing from {name}: {missing}")
    figures = {"rows": {k: {"img_per_s": r["img_per_s"], "step_ms": r["step_ms"], "label": r["label"]}
                        for k, r in got.items()},
               "ratios": result.get("ratios", {}), "compile": result["meta"].get("compile"),
               "breakdown": {k: v["share"] for k, v in result.get("breakdown", {}).items()}}
    return figures


def check_bench_compile(out, steps, dry):
    figures = check_bench_step(out, steps, dry, rows=("kd/on",), name="bench_compile.json")
    if not dry and not (figures["compile"] or {}).get("enabled"):
        raise StepFailed(f"torch.compile was not used: {figures['compile']}")
    return figures


def check_torchrun(out, steps, dry):
    folder = os.path.join(steps, "torchrun")
    summary = _json(os.path.join(folder, "summary.json"))
    params = _json(os.path.join(folder, "parameters.json"))
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        epochs = [json.loads(ln) for ln in f if ln.strip()]
    log = "\n".join(_tail(os.path.join(steps, "torchrun.log"), 10 ** 6))
    nccl = re.search(r"NCCL version (\S+)", log)
    figures = {"status": summary.get("status"), "teacher_acc": summary.get("teacher_acc"),
               "best_acc": summary.get("best_acc"), "last_acc": summary.get("last_acc"),
               "epochs": len(epochs), "img_per_s": [e.get("img_per_s") for e in epochs],
               "train_loss": [e.get("train_loss") for e in epochs], "world_size": params.get("world_size"),
               "dist_backend": params.get("dist_backend"), "dali": params.get("dali"),
               "nccl": nccl.group(1) if nccl else None}
    if summary.get("status") != "finished" or not epochs or not all(math.isfinite(x) for x in figures["train_loss"]):
        raise StepFailed(f"the student did not finish cleanly: status {summary.get('status')}, {len(epochs)} epochs")
    if not dry and "NCCL INFO" not in log:
        raise StepFailed("no 'NCCL INFO' line in the log (NCCL_DEBUG=INFO): NCCL did not run")
    return figures


def check_bench_group(out, steps, dry):
    result = _json(os.path.join(out, "bench_group.json"))
    want = result["meta"]["args"]["ks"]
    if [r["K"] for r in result["rows"]] != want:
        raise StepFailed(f"rows for K = {[r['K'] for r in result['rows']]}, asked {want}")
    return {"teacher_ms_per_batch": 1000 * result["teacher_s_per_batch"],
            "rows": [{"K": r["K"], "per_student_img_per_s": r["per_student_img_per_s"], "ratio": r["wall"]["ratio"],
                      "ideal": r["wall"]["ideal"], "fraction_of_ideal": r["wall"]["fraction_of_ideal"],
                      "teacher_share": r["wall"]["teacher_share"]} for r in result["rows"]]}


CHECKS = {"pytest": check_pytest, "bench_step": check_bench_step, "bench_compile": check_bench_compile,
          "torchrun": check_torchrun, "bench_group": check_bench_group}


def step_record(out: str, name: str, title: str, dry: bool) -> dict:
    steps = os.path.join(out, "steps")
    rec = {"name": name, "title": title, "status": "not run", "reason": "", "figures": {},
           "log": os.path.join("steps", f"{name}.log")}
    try:
        with open(os.path.join(steps, f"{name}.status")) as f:
            rec.update({k: float(v) for k, v in (kv.split("=") for kv in f.read().split())})
        with open(os.path.join(steps, f"{name}.cmd")) as f:
            rec["command"] = f.read().strip()
    except OSError:
        rec["reason"] = "the script did not run this step"
        return rec
    rc = rec["returncode"] = int(rec.pop("rc"))
    rec["timeout_s"] = rec.pop("timeout")
    problem = None
    try:  # figures also for failed and timed-out steps, as far as they got
        rec["figures"] = CHECKS[name](out, steps, dry)
    except StepFailed as e:
        problem = str(e)
    except (OSError, KeyError, ValueError, ET.ParseError) as e:
        problem = f"its output is missing or unreadable ({type(e).__name__}: {e})"
    if rc in (124, 137):
        rec.update(status="timed_out", reason=f"stopped after its {rec['timeout_s']:.0f} s timeout")
    elif rc != 0:
        last = [ln for ln in _tail(os.path.join(steps, f"{name}.log"), 40) if ln.strip()]
        err = next((ln for ln in reversed(last) if re.match(r"^(error: |\w*Error|FAILED|E  )", ln)),
                   last[-1] if last else "")
        rec.update(status="failed", reason=f"exit code {rc}" + (f": {err[:300]}" if err else "")
                   + (f"; {problem}" if problem else ""))
    elif problem:
        rec.update(status="failed", reason=problem)
    else:
        rec["status"] = "passed"
    if rec["status"] != "passed":
        rec["log_tail"] = _tail(os.path.join(steps, f"{name}.log"))
    return rec


def targets(steps: dict) -> list:
    bench = steps["bench_step"]["figures"]
    rows, ratios = bench.get("rows", {}), bench.get("ratios", {})
    compiled = steps["bench_compile"]["figures"].get("rows", {})
    values = [rows.get("kd/on", {}).get("img_per_s"), compiled.get("kd/on", {}).get("img_per_s"),
              ratios.get("speed paths on/off (kd)"), ratios.get("cka_group/kd step time"),
              ratios.get("crd/kd step time")]
    out = []
    for (what, threshold, op), v in zip(TARGETS, values):
        met = None if v is None else (v >= threshold if op == ">=" else v <= threshold)
        out.append({"figure": what, "target": f"{op} {threshold:g}", "measured": v, "met": met})
    return out


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) >= 10 else f"{v:.3f}"
    return str(v)


def summary_line(rec: dict) -> str:
    f = rec["figures"]
    if not f:
        return rec["reason"]
    if rec["name"] == "pytest":
        text = ", ".join(f"{n} {k}" for k, n in sorted(f["counts"].items()))
        return text + (f" (of {f['collected']} collected)" if "collected" in f else "")
    if rec["name"] in ("bench_step", "bench_compile"):
        r = f["rows"].get("kd/on")
        return f"kd/on {_fmt(r['img_per_s'])} img/s ({r['label']})" if r else ""
    if rec["name"] == "torchrun":
        return (f"{f['dist_backend']}, dali {f['dali']}, world size {f['world_size']}: epochs {f['epochs']}, "
                f"{_fmt(f['img_per_s'][-1])} img/s, top-1 {f['last_acc']:.2f}"
                + (f", NCCL {f['nccl']}" if f.get("nccl") else ""))
    if rec["name"] == "bench_group":
        last = f["rows"][-1]
        return (f"K={last['K']}: group/separate {_fmt(last['ratio'])} of ideal {_fmt(last['ideal'])} "
                f"({100 * last['fraction_of_ideal']:.0f}%)")
    return ""


def markdown(report: dict) -> str:
    m, steps = report["meta"], {s["name"]: s for s in report["steps"]}
    lines = [f"# GPU check: {m.get('device')}, {m.get('date', '')[:10]}" + (" (dry run, CPU)" if report["dry_run"] else ""),
             "",
             f"torch {m.get('torch')} (CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}"
             + (f", NCCL {m['nccl']}" if m.get("nccl") else "") + f"), triton {m.get('triton')}, DALI {m.get('dali')}"
             + (f", driver {m['driver']}" if m.get("driver") else "")
             + (f", {m['memory_gib']} GiB" if m.get("memory_gib") else "")
             + f"; commit {m.get('commit')}{' (dirty)' if m.get('dirty') else ''}; "
             f"{report['total_s']:.0f} s in all. **{report['passed']}/{len(report['steps'])} steps passed.**", "",
             "| step | status | time | timeout | figures / reason |", "|---|---|---|---|---|"]
    for i, s in enumerate(report["steps"], 1):
        t = f"{s['seconds']:.0f} s" if "seconds" in s else "-"
        to = f"{s['timeout_s']:.0f} s" if "timeout_s" in s else "-"
        text = summary_line(s) if s["status"] == "passed" else (s["reason"] + ("; " + summary_line(s) if s["figures"] else ""))
        lines.append(f"| {i} {s['title']} | {s['status']} | {t} | {to} | {text.replace('|', '/')} |")
    bad = [t for t in steps["pytest"]["figures"].get("tests", []) if t["outcome"] in ("failed", "error")]
    skipped = [t for t in steps["pytest"]["figures"].get("tests", []) if t["outcome"] == "skipped"]
    if bad or (skipped and not report["dry_run"]):
        lines += ["", "## Tests not passed", ""] + [f"- `{t['test']}` **{t['outcome']}**: {t['message']}"
                                                     for t in bad + ([] if report["dry_run"] else skipped)]
    rows = {**steps["bench_step"]["figures"].get("rows", {}),
            **{f"{k} (compile reduce-overhead)": v for k, v in steps["bench_compile"]["figures"].get("rows", {}).items()}}
    if rows:
        lines += ["", "## Step throughput (bench_step.py)", "", "| configuration | img/s | ms/step | paths |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['img_per_s'])} | {_fmt(v['step_ms'], 2)} | {v['label']} |" for k, v in rows.items()]
        ratios = steps["bench_step"]["figures"].get("ratios", {})
        lines += ["", "| ratio | measured |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    if not report["dry_run"]:
        lines += ["", "## Targets (stated for an H100)", "", "| figure | target | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t['figure']} | {t['target']} | {_fmt(t['measured'])} | "
                  f"{'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |" for t in report["targets"]]
    group = steps["bench_group"]["figures"]
    if group:
        lines += ["", f"## Group of K students (bench_group.py; teacher forward {group['teacher_ms_per_batch']:.2f} ms/batch)",
                  "", "| K | img/s per student | group/separate | ideal | of ideal | teacher share |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['K']} | {_fmt(r['per_student_img_per_s'])} | {r['ratio']:.3f} | {r['ideal']:.3f} | "
                  f"{100 * r['fraction_of_ideal']:.1f}% | {100 * r['teacher_share']:.1f}% |" for r in group["rows"]]
    for s in report["steps"]:
        if s.get("log_tail"):
            lines += ["", f"## Log tail of {s['name']} ({s['log']})", "", "```"] + s["log_tail"] + ["```"]
    return "\n".join(lines) + "\n"


def write_report(out: str, dry: bool, started: float | None) -> dict:
    try:
        meta = _json(os.path.join(out, "env.json"))
    except (OSError, ValueError):
        meta = {"device": "unknown (env.json missing)"}
    recs = [step_record(out, name, dry_title if dry else title, dry) for name, title, dry_title in STEPS]
    report = {"meta": meta, "dry_run": dry, "steps": recs,
              "total_s": (datetime.datetime.now().timestamp() - started) if started
              else sum(r.get("seconds", 0.0) for r in recs),
              "passed": sum(r["status"] == "passed" for r in recs)}
    report["all_passed"] = report["passed"] == len(recs)
    report["targets"] = targets({r["name"]: r for r in recs})
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(report))
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("path")
    e.add_argument("--dry-run", action="store_true")
    d = sub.add_parser("data")
    d.add_argument("folder")
    d.add_argument("--n_train", type=int, required=True)
    d.add_argument("--n_test", type=int, required=True)
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--started", type=float, default=None, help="the script's start (seconds since the epoch)")
    args = p.parse_args(argv)
    if args.cmd == "env":
        info = env_info(args.dry_run)
        with open(args.path, "w") as f:
            json.dump(info, f, indent=1)
        print(f"{info['device']}; torch {info['torch']}, CUDA {info['cuda']}; commit {info['commit']}")
        if not args.dry_run and not info["cuda_available"]:
            print("error: no CUDA device is visible (torch.cuda.is_available() is False); "
                  "GPU_CHECK_DRY_RUN=1 runs the CPU dry run", file=sys.stderr)
            return 3
        return 0
    if args.cmd == "data":
        make_data(args.folder, args.n_train, args.n_test)
        return 0
    report = write_report(args.out, args.dry_run, args.started)
    print(open(os.path.join(args.out, "report.md")).read())
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
