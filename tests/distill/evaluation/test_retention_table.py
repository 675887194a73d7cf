"""recipes/smollm2-135m/retention_table.py: rows from retention evaluations, and a length read from a time-budget
run's draws when it has no evaluation of its own (the whole row from one source, labelled)."""
import importlib.util
import json
import os

from distill.evaluation.tasks import Problem

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes", "smollm2-135m", "retention_table.py")
_spec = importlib.util.spec_from_file_location("retention_table", _PATH)
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)

PROBLEMS = [Problem(str(i), f"q{i}", str(i + 1)) for i in range(4)]


def _write(path, model, tasks, right):
    """An eval.json-shaped file: right[i] of problem i's two samples are correct."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    comps = [[f"\\boxed{{{p.answer if j < r else 0}}}" for j in range(2)] for p, r in zip(PROBLEMS, right)]
    with open(path, "w") as f:
        json.dump({"model": model, "tasks": tasks, "samples": 2, "completions": comps,
                   "problems": [p.to_dict() for p in PROBLEMS]}, f)


def test_rows_from_evaluations_and_from_time_budget_draws(tmp_path):
    out = str(tmp_path)
    t200 = "long:test:tokens=200:mod=10"
    _write(f"{out}/retention/long-200/reasoner/eval.json", "r", t200, [2, 2, 2, 2])
    _write(f"{out}/retention/long-200/h50/eval.json", "a", t200, [2, 1, 2, 1])  # 6 of 8: retention 0.75
    t1500 = "long:test:tokens=1500:mod=10"
    tb = f"{out}/time-budget"
    _write(f"{tb}/samples/0.json", f"{out}/sft-teacher/final", t1500, [2, 2, 1, 1])  # 6 of 8
    _write(f"{tb}/samples/1.json", f"{out}/distill/stage0/kd/model/", t1500, [2, 1, 0, 0])  # 3 of 8: 0.5
    _write(f"{tb}/samples/2.json", f"{out}/distill/final", "long:test:tokens=800:mod=10", [2, 2, 2, 2])  # other task
    _write(f"{out}/retention/long-1500/h25/eval.json", "c", t1500, [0, 0, 1, 2])  # 3 of 8: 0.5, an evaluation
    lines, rows = rt.table(out, ["200", "800", "1500"], [], time_budget=tb)
    assert lines[2].startswith(f"| {t200} | 1.000 | 0.750 | 0.75 [") and "| not measured | " in lines[2]
    assert lines[3] == "| long:test:tokens=800:mod=10 | not measured | | | | |"
    assert lines[4].startswith(f"| {t1500} (reasoner, 50 %: time-budget draws, 2 samples per problem) | 0.750 | "
                               "0.375 | 0.50 [")
    assert "| 0.375 | 0.50 [" in lines[4].split("0.50 [", 1)[1]  # the 25 % hybrid's own evaluation, paired
    assert rows[f"{t1500} h50"]["retention"] == 0.5 and rows[f"{t1500} h25"]["retention"] == 0.5
    assert rows[f"{t1500} h25"]["other"].endswith("long-1500/h25/eval.json")
    # without the time-budget run the row is not measured
    assert rt.table(out, ["1500"], [])[0][2] == f"| {t1500} | not measured | | | | |"
