"""Where a long-reasoning model goes wrong: over every trace line "i. a op b = raw -> r" of the completions in an
eval.json of `long` problems, the share whose operation (op and operand) is the prompt's i-th one, and the share
whose arithmetic is right given the line's own a (so one early slip does not count every later line wrong).

    python recipes/smollm2-135m/trace_lines.py runs/long-demo/retention/long-200/reasoner/eval.json
"""
import json
import re
import sys

LINE = re.compile(r"^(\d+)\. (\d+) ([+*-]) (\d+) = (-?\d+) -> (\d+)$", re.M)
OP = re.compile(r"^\d+\. (add|subtract|multiply by) (\d+)$", re.M)
SIGN = {"add": "+", "subtract": "-", "multiply by": "*"}


def trace_lines(run: dict) -> dict:
    lines = copied = right = 0
    for problem, completions in zip(run["problems"], run["completions"]):
        mod = int(re.search(r"modulo (\d+)", problem["problem"]).group(1))
        ops = OP.findall(problem["problem"])
        for text in completions:
            for m in LINE.finditer(text):
                i, a, op, b, _, r = m.groups()
                lines += 1
                k = int(i) - 1
                copied += 0 <= k < len(ops) and SIGN[ops[k][0]] == op and ops[k][1] == b
                value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
                right += int(r) == value % mod
    return {"lines": lines, "operation_copied": copied / max(1, lines), "arithmetic_right": right / max(1, lines),
            "pass@1": run.get("pass@1")}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(path, json.dumps(trace_lines(json.load(open(path)))))
