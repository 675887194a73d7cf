"""How many of a conversion corpus's completions are right: each row's prompt is looked up among the task spec's
problems and its completion checked against the generator's answer with the task's answer checker, by number of
steps (long-task prompts say "Apply these N operations").

Usage: python recipes/smollm2-135m/corpus_accuracy.py OUT/distill/corpus.jsonl [--tasks long:train:tokens=100..1600:mod=10]
       [--n 4096]   (the corpus recipe's prompts spec and count)
"""
from __future__ import annotations

import argparse
import json
import re

from distill.evaluation.tasks import is_correct, load_tasks, prompt_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--tasks", default="long:train:tokens=100..1600:mod=10")
    ap.add_argument("--n", type=int, default=4096)
    a = ap.parse_args()
    problems = {prompt_of(p): p for p in load_tasks(a.tasks, n=a.n)}
    rows = [json.loads(line) for line in open(a.corpus, encoding="utf-8")]
    missing = [i for i, r in enumerate(rows) if r["prompt"] not in problems]
    if missing:
        raise SystemExit(f"rows {missing[:5]}... have prompts that {a.tasks} (n={a.n}) does not hold")
    steps = lambda p: int(m.group(1)) if (m := re.search(r"these (\d+) operations", p)) else 0  # noqa: E731
    results = [(steps(r["prompt"]), is_correct(r["completion"], problems[r["prompt"]].answer)) for r in rows]
    print(f"{len(results)} rows, {sum(ok for _, ok in results)} correct")
    for lo, hi in ((0, 15), (15, 30), (30, 60), (60, 90), (90, 10 ** 9)):
        sel = [ok for steps, ok in results if lo <= steps < hi]
        if sel:
            print(f"  {lo}-{hi - 1 if hi < 10 ** 9 else ''} steps: {sum(sel)} of {len(sel)}")


if __name__ == "__main__":
    main()
