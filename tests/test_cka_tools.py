"""The CKA diagnostic scripts run end to end on a small dataset and print what they claim."""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import cka_bias  # noqa: E402
import cka_matrix  # noqa: E402
from models import model_dict  # noqa: E402


def _ckpt(tmp_path, arch, extra=None):
    torch.manual_seed(0)
    folder = tmp_path / f"{arch}_vanilla_digits_trial_0"
    folder.mkdir(exist_ok=True)
    path = str(folder / f"{arch}_best.pth")
    obj = {"model": model_dict[arch](num_classes=10).state_dict(), "arch": arch}
    obj.update(extra or {})
    torch.save(obj, path)
    return path


def test_cka_matrix_prints_groups_and_writes_png_and_json(tmp_path, capsys):
    path_t = _ckpt(tmp_path, "resnet14")
    grouping = {"teacher_ends": [3, 8], "student_ends": [3, 5], "grouping": "dp"}
    path_s = _ckpt(tmp_path, "resnet8", {"distiller": {"_extra_state": grouping}})
    out, js = str(tmp_path / "m.png"), str(tmp_path / "m.json")
    cka_matrix.main(["--path_t", path_t, "--path_s", path_s, "--dataset", "digits", "--images", "64",
                     "--batch_size", "32", "--out", out, "--json", js])
    text = capsys.readouterr().out
    assert "teacher groups from the run" in text and "ends [3, 8]" in text
    data = json.load(open(js))
    tt = data["teacher_cka"]
    assert len(tt) == 8 and all(abs(tt[i][i] - 1) < 1e-6 for i in range(8))
    assert len(data["student_x_teacher"]) == 5 and data["student_ends"] == [3, 5]
    try:
        import matplotlib  # noqa: F401
        assert os.path.getsize(out) > 1000
    except ImportError:
        assert not os.path.exists(out)


def test_cka_bias_reports_matched_above_shuffled(capsys):
    cka_bias.main(["--model_t", "resnet14", "--model_s", "resnet8", "--dataset", "digits", "--batch_size", "32",
                   "--batches", "2"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| unbiased") or
            ln.startswith("| biased")]
    assert len(rows) == len(cka_bias.CHOICES)
    for ln in rows:
        same, shuffled = float(ln.split("|")[3]), float(ln.split("|")[4])
        assert same > shuffled  # the same images are more similar than unrelated ones
    unbiased = [float(ln.split("|")[4]) for ln in rows if ln.startswith("| unbiased")]
    assert all(abs(v) < 0.1 for v in unbiased)  # the unbiased estimator's chance level is ~0
