"""Retention table of a long_reasoning.sh run: pass@1 of the 50 % and 25 % hybrids over the reasoner's, paired over
problems with a bootstrap 95 % interval, per trace length and recall distance. Cells whose evaluations are not
there yet say so (the script runs them in order; an interrupted run leaves the long ones for its --resume).

Usage: python recipes/smollm2-135m/retention_table.py OUT [--lengths 200 800 1500] [--distances 64 256 1024]
       [--time-budget OUT/time-budget]
--time-budget: a model with no retention evaluation of its own at a length is read from the time-budget run's draws
of the same held-out problems (its samples/<i>.json: more samples per problem, the bench recipe's max new tokens);
the row names those models. Pairing over problems holds across the two sources (per-problem pass@1 either way).
Writes OUT/retention/table.md and table.json, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os

from distill.evaluation.evaluate import paired_compare

MODELS = (("h50", "50 %"), ("h25", "25 %"))
PATHS = {"reasoner": "sft-teacher/final", "h50": "distill/stage0/kd/model", "h25": "distill/final"}
NAMES = {"reasoner": "reasoner", "h50": "50 %", "h25": "25 %"}


def draws_of(out: str, time_budget: str | None, tasks: str) -> dict[str, str]:
    """role -> the time-budget run's samples file of that model, where the run drew `tasks` (else empty)."""
    folder = os.path.join(time_budget or "", "samples")
    if not time_budget or not os.path.isdir(folder):
        return {}
    found = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            run = json.load(f)
        if run.get("tasks") != tasks:
            continue
        for role, rel in PATHS.items():
            if os.path.normpath(run["model"]) == os.path.normpath(os.path.join(out, rel)):
                found[role] = os.path.join(folder, name)
    return found


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(out: str, lengths, distances, time_budget: str | None = None) -> tuple[list[str], dict]:
    lines = ["| task | reasoner pass@1 | 50 % hybrid pass@1 | retention 50 % [95 % CI] | 25 % hybrid pass@1 "
             "| retention 25 % [95 % CI] |", "|---|---|---|---|---|---|"]
    rows = {}
    tasks = [("long", s, f"long:test:tokens={s}:mod=10") for s in lengths]
    tasks += [("recall", s, f"recall:test:distance={s}") for s in distances]
    for family, size, key in tasks:
        folder = os.path.join(out, "retention", f"{family}-{size}")
        files = {role: os.path.join(folder, role, "eval.json") for role in PATHS}
        draws = draws_of(out, time_budget, key) if family == "long" else {}
        from_draws = [role for role in PATHS if not os.path.isfile(files[role]) and role in draws]
        label = key
        if from_draws:  # a model with no evaluation of its own at this length: its time-budget draws
            files.update({role: draws[role] for role in from_draws})
            with open(draws[from_draws[0]]) as f:
                k = json.load(f)["samples"]
            label = f"{key} ({', '.join(NAMES[r] for r in from_draws)}: time-budget draws, {k} samples per problem)"
        base = files["reasoner"]
        if not os.path.isfile(base):
            lines.append(f"| {key} | not measured | | | | |")
            continue
        cells, base_p1 = [], None
        for m, _ in MODELS:
            other = files[m]
            if not os.path.isfile(other):
                cells.append("not measured | ")
                continue
            r = paired_compare(base, other)
            rows[f"{key} {m}"] = r
            base_p1 = r["base_pass@1"]
            ci = r.get("retention_ci95") or [None, None]
            cells.append(f"{r['other_pass@1']:.3f} | {fmt(r.get('retention'))} [{fmt(ci[0])}, {fmt(ci[1])}]")
        if base_p1 is None:  # no hybrid measured yet: the reasoner against itself gives its pass@1
            base_p1 = paired_compare(base, base)["base_pass@1"]
        lines.append(f"| {label} | {base_p1:.3f} | " + " | ".join(cells) + " |")
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--lengths", nargs="*", default=["200", "800", "1500"])
    ap.add_argument("--distances", nargs="*", default=["64", "256", "1024"])
    ap.add_argument("--time-budget", default=None, help="a time-budget run (eval time-budget --out) of OUT's models")
    a = ap.parse_args()
    lines, rows = table(a.out, a.lengths, a.distances, a.time_budget)
    os.makedirs(os.path.join(a.out, "retention"), exist_ok=True)
    with open(os.path.join(a.out, "retention", "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "retention", "table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
