"""Where a decode step's time goes: one model's static decode step at batch 16 and a given context, its linear
layers packed as generation packs them, the median of 24 steps, then torch.profiler over 4 more steps (ops by
self CPU time).

    python recipes/smollm2-135m/decode_profile.py [--model smollm2-135m] [--context 128] [--dtype float32]
        [--prepack on|onednn|csrc|off] [--decode static|compiled]

--decode compiled profiles the step through torch.compile as the engine compiles it (hybrid.generation
.compiled_decode_step: weights frozen into the graph on the CPU; the linears are then never packed by
hybrid.prepack, so --prepack does not apply); the compilation happens before the timed steps.

Environment settings that act when a process starts (e.g. OMP_WAIT_POLICY, GOMP_SPINCOUNT) are compared by running
it once per setting, alternated."""
import argparse

import torch

from distill.evaluation.throughput import _context_stepper
from distill.loading import load_model
from hybrid.prepack import prepacked_linears


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--prepack", default="on", choices=["on", "onednn", "csrc", "off"])
    ap.add_argument("--decode", default="static", choices=["static", "compiled"])
    ap.add_argument("--no-profile", action="store_true")
    a = ap.parse_args()
    model, _, _ = load_model(a.model, dtype=getattr(torch, a.dtype))
    packing = False if a.decode == "compiled" else {"on": True, "off": False}.get(a.prepack, a.prepack)
    with torch.no_grad(), prepacked_linears(model, packing) as packed:
        _, step = _context_stepper(model, a.batch, a.context, 28, 0, a.decode, torch.device("cpu"))
        times = sorted(step(s) for s in range(24))
        print(f"{a.model} {a.dtype} {a.decode} batch {a.batch} context {a.context}, linears {packed.label}: "
              f"median step {1000 * times[len(times) // 2]:.1f} ms", flush=True)
        if a.no_profile:
            return
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for s in range(24, 28):
                step(s)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    from distill.allocator import rerun_under_tcmalloc
    rerun_under_tcmalloc()  # timed as the command line runs: on tcmalloc where installed
    main()
