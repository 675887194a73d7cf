"""Where a long-reasoning model goes wrong, from an eval.json of `long` problems (a retention evaluation or a
time-budget run's samples/<i>.json).

Per trace line "i. a op b = raw -> r": the share whose operation (op and operand) is the prompt's i-th one, and the
share whose arithmetic is right given the line's own a (so one early slip does not count every later line wrong).

Per completion, its first failure, walking the lines in order against the prompt: `numbering` (the line is not
step i), `copy` (not the prompt's i-th operation), `carry` (a is not the previous line's result, or the start
value), `arithmetic` (r is wrong given a), `stopped` (every line right, but fewer lines than operations), or
`complete` (all operations, every line right). The step at which it happened tells a model that loses the
operation list far into a long prompt (copy at step ~45) from one that ends a trace it never learnt to write that
long (stopped, or numbering at step 90).

    python recipes/smollm2-135m/trace_lines.py runs/long-demo/retention/long-200/reasoner/eval.json
"""
import json
import re
import statistics
import sys

LINE = re.compile(r"^(\d+)\. (\d+) ([+*-]) (\d+) = (-?\d+) -> (\d+)$", re.M)
OP = re.compile(r"^\d+\. (add|subtract|multiply by) (\d+)$", re.M)
START = re.compile(r"Start with the number (\d+)")
SIGN = {"add": "+", "subtract": "-", "multiply by": "*"}
KINDS = ("complete", "numbering", "copy", "carry", "arithmetic", "stopped", "overran")


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def first_failure(problem_text: str, completion: str) -> tuple[str, int]:
    """(kind, step) of the completion's first failure (KINDS); step is 1-based, the step after the last line for
    `stopped`, the first line past the operations for `overran` and the number of operations for `complete`."""
    mod = int(re.search(r"modulo (\d+)", problem_text).group(1))
    ops = OP.findall(problem_text)
    value = int(START.search(problem_text).group(1))
    lines = LINE.findall(completion)
    for k, (i, a, op, b, _, r) in enumerate(lines[:len(ops)], start=1):
        if int(i) != k:
            return "numbering", k
        if SIGN[ops[k - 1][0]] != op or ops[k - 1][1] != b:
            return "copy", k
        if int(a) != value:
            return "carry", k
        if int(r) != _apply(op, int(a), int(b)) % mod:
            return "arithmetic", k
        value = int(r)
    if len(lines) < len(ops):
        return "stopped", len(lines) + 1
    if len(lines) > len(ops):
        return "overran", len(ops) + 1
    return "complete", len(ops)


def trace_lines(run: dict) -> dict:
    lines = copied = right = 0
    failures = {kind: [] for kind in KINDS}
    for problem, completions in zip(run["problems"], run["completions"]):
        mod = int(re.search(r"modulo (\d+)", problem["problem"]).group(1))
        ops = OP.findall(problem["problem"])
        for text in completions:
            kind, step = first_failure(problem["problem"], text)
            failures[kind].append(step)
            for m in LINE.finditer(text):
                i, a, op, b, _, r = m.groups()
                lines += 1
                k = int(i) - 1
                copied += 0 <= k < len(ops) and SIGN[ops[k][0]] == op and ops[k][1] == b
                right += int(r) == _apply(op, int(a), int(b)) % mod
    n = sum(len(v) for v in failures.values())
    first = {kind: {"share": len(steps) / max(1, n), "median_step": statistics.median(steps) if steps else None}
             for kind, steps in failures.items()}
    return {"lines": lines, "operation_copied": copied / max(1, lines), "arithmetic_right": right / max(1, lines),
            "completions": n, "first_failure": first, "pass@1": run.get("pass@1")}


def summary(path: str, result: dict) -> str:
    parts = [f"{kind} {v['share']:.2f}" + (f" (median step {v['median_step']:g})" if v["median_step"] is not None
                                            and kind != "complete" else "")
             for kind, v in result["first_failure"].items() if v["share"] > 0]
    return (f"{path}: {result['completions']} completions, {result['lines']} lines, operation copied "
            f"{result['operation_copied']:.3f}, arithmetic right {result['arithmetic_right']:.3f}; first failure: "
            + ", ".join(parts))


if __name__ == "__main__":
    as_json = "--json" in sys.argv[1:]
    for path in [a for a in sys.argv[1:] if a != "--json"]:
        result = trace_lines(json.load(open(path)))
        print(json.dumps({"path": path, **result}) if as_json else summary(path, result))
