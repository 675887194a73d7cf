"""recipes/smollm2-135m/trace_lines.py: each completion's first failure against its prompt, on a generated `long`
problem whose gold trace is edited one way at a time."""
import importlib.util
import os

import pytest

from distill.evaluation.tasks import load_tasks

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes", "smollm2-135m", "trace_lines.py")
_spec = importlib.util.spec_from_file_location("trace_lines", _PATH)
tl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tl)


@pytest.fixture(scope="module")
def problem():
    return load_tasks("long:test:tokens=200:mod=10", n=1, seed=0)[0]


def _edit_line(solution: str, step: int, edit) -> str:
    """The gold trace with step `step`'s line replaced by edit(i, a, op, b, raw, r) (a string)."""
    lines = solution.split("\n")
    for j, line in enumerate(lines):
        m = tl.LINE.match(line)
        if m and int(m.group(1)) == step:
            lines[j] = edit(*m.groups())
            return "\n".join(lines)
    raise AssertionError(f"no step {step} in the gold trace")


def test_gold_trace_is_complete(problem):
    n_ops = len(tl.OP.findall(problem.problem))
    assert n_ops >= 6
    assert tl.first_failure(problem.problem, problem.solution) == ("complete", n_ops)


def test_each_kind_of_first_failure(problem):
    text, gold = problem.problem, problem.solution
    other = {"+": "*", "*": "-", "-": "+"}
    # step 3 with the wrong operation (later lines untouched: the first failure decides)
    copy = _edit_line(gold, 3, lambda i, a, op, b, raw, r: f"{i}. {a} {other[op]} {b} = {raw} -> {r}")
    assert tl.first_failure(text, copy) == ("copy", 3)
    # step 4 starting from a value that is not step 3's result, with its own arithmetic right
    def carry(i, a, op, b, raw, r):
        a2 = (int(a) + 1) % 10
        return f"{i}. {a2} {op} {b} = {tl._apply(op, a2, int(b))} -> {tl._apply(op, a2, int(b)) % 10}"
    assert tl.first_failure(text, _edit_line(gold, 4, carry)) == ("carry", 4)
    wrong = _edit_line(gold, 2, lambda i, a, op, b, raw, r: f"{i}. {a} {op} {b} = {raw} -> {(int(r) + 1) % 10}")
    assert tl.first_failure(text, wrong) == ("arithmetic", 2)
    renumbered = _edit_line(gold, 5, lambda i, a, op, b, raw, r: f"{int(i) + 1}. {a} {op} {b} = {raw} -> {r}")
    assert tl.first_failure(text, renumbered) == ("numbering", 5)
    # the trace closed after five right lines
    lines = gold.split("\n")
    cut = next(j for j, line in enumerate(lines) if line.startswith("6. "))
    stopped = "\n".join(lines[:cut] + ["</think>", "The answer is \\boxed{0}."])
    assert tl.first_failure(text, stopped) == ("stopped", 6)
    # every operation right, then one line more: the trace ran past the last operation
    n_ops = len(tl.OP.findall(text))
    last = next(j for j, line in enumerate(lines) if line.startswith(f"{n_ops}. "))
    extra = f"{n_ops + 1}. 3 + 4 = 7 -> 7"
    overran = "\n".join(lines[:last + 1] + [extra] + lines[last + 1:])
    assert tl.first_failure(text, overran) == ("overran", n_ops + 1)


def test_summary_counts_every_completion(problem):
    copy = _edit_line(problem.solution, 3, lambda i, a, op, b, raw, r: f"{i}. {a} {op} {(int(b) + 1) % 10} = 0 -> 0")
    run = {"problems": [problem.to_dict()], "completions": [[problem.solution, copy, "no trace"]], "pass@1": 1 / 3}
    out = tl.trace_lines(run)
    assert out["completions"] == 3
    ff = out["first_failure"]
    assert ff["complete"]["share"] == pytest.approx(1 / 3) and ff["copy"] == {"share": pytest.approx(1 / 3),
                                                                              "median_step": 3}
    assert ff["stopped"] == {"share": pytest.approx(1 / 3), "median_step": 1}
    assert "first failure: complete 0.33, copy 0.33 (median step 3), stopped 0.33 (median step 1)" in tl.summary("x", out)
