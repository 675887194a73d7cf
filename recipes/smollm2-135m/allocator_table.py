"""Markdown table of `hybrid-distill bench train` results under different C allocators, one row per run in the
order given, and the median tokens/s per setting (the run's name without its leading number and trailing -N: a
folder `03-tcmalloc/bench_train.json` or a file `03-tcmalloc-2.json` is setting "tcmalloc").

    python recipes/smollm2-135m/allocator_table.py runs/bench-allocator/*/bench_train.json
"""
import json
import os
import re
import statistics
import sys
from collections import defaultdict


def setting(path: str) -> str:
    name = os.path.basename(os.path.dirname(path)) if os.path.basename(path) == "bench_train.json" else \
        os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"-\d+$", "", re.sub(r"^\d+-", "", name))


def main(paths: list[str]) -> str:
    lines = ["| run | setting | allocator | tokens/s | MFU | page faults / step | kernel CPU | step memory GB |",
             "|---|---|---|---|---|---|---|---|"]
    speeds = defaultdict(list)
    for path in paths:
        result = json.load(open(path))
        alloc = result["environment"].get("allocator", "glibc")
        for r in result["rows"]:
            speeds[setting(path)].append(r["tokens_per_s"])
            lines.append(f"| {os.path.basename(path)} | {setting(path)} | {alloc} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | "
                         f"{r['page_faults_per_step'] / 1e3:.0f}k | {100 * r['kernel_cpu_share']:.0f}% | "
                         f"{r['step_memory_GB']:.2f} |")
    lines.append("")
    lines.append("median tokens/s per setting: " + ", ".join(f"{a} {statistics.median(v):.0f} ({len(v)} runs)"
                                                for a, v in speeds.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(main(sys.argv[1:]))
