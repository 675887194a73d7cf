"""Retention table of a long_reasoning.sh run: pass@1 of the 50 % and 25 % hybrids over the reasoner's, paired over
problems with a bootstrap 95 % interval, per trace length and recall distance. Cells whose evaluations are not
there yet say so (the script runs them in order; an interrupted run leaves the long ones for its --resume).

Usage: python recipes/smollm2-135m/retention_table.py OUT [--lengths 200 800 1500] [--distances 64 256 1024]
Writes OUT/retention/table.md and table.json, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os

from distill.evaluation.evaluate import paired_compare

MODELS = (("h50", "50 %"), ("h25", "25 %"))


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(out: str, lengths, distances) -> tuple[list[str], dict]:
    lines = ["| task | reasoner pass@1 | 50 % hybrid pass@1 | retention 50 % [95 % CI] | 25 % hybrid pass@1 "
             "| retention 25 % [95 % CI] |", "|---|---|---|---|---|---|"]
    rows = {}
    tasks = [("long", s, f"long:test:tokens={s}:mod=10") for s in lengths]
    tasks += [("recall", s, f"recall:test:distance={s}") for s in distances]
    for family, size, key in tasks:
        folder = os.path.join(out, "retention", f"{family}-{size}")
        base = os.path.join(folder, "reasoner")
        if not os.path.isfile(os.path.join(base, "eval.json")):
            lines.append(f"| {key} | not measured | | | | |")
            continue
        cells, base_p1 = [], None
        for m, _ in MODELS:
            other = os.path.join(folder, m)
            if not os.path.isfile(os.path.join(other, "eval.json")):
                cells.append("not measured | ")
                continue
            r = paired_compare(base, other)
            rows[f"{key} {m}"] = r
            base_p1 = r["base_pass@1"]
            ci = r.get("retention_ci95") or [None, None]
            cells.append(f"{r['other_pass@1']:.3f} | {fmt(r.get('retention'))} [{fmt(ci[0])}, {fmt(ci[1])}]")
        if base_p1 is None:  # no hybrid measured yet: the reasoner against itself gives its pass@1
            base_p1 = paired_compare(base, base)["base_pass@1"]
        lines.append(f"| {key} | {base_p1:.3f} | " + " | ".join(cells) + " |")
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--lengths", nargs="*", default=["200", "800", "1500"])
    ap.add_argument("--distances", nargs="*", default=["64", "256", "1024"])
    a = ap.parse_args()
    lines, rows = table(a.out, a.lengths, a.distances)
    os.makedirs(os.path.join(a.out, "retention"), exist_ok=True)
    with open(os.path.join(a.out, "retention", "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "retention", "table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
