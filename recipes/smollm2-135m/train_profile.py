"""Where a training step's time goes: one `bench train` variant (the same student, teacher, rows and Trainer as
`hybrid-distill bench train`), its median step over a few steps, then torch.profiler over more, ops grouped by what
they are: the GEMMs (whose FLOPs MFU counts), the Mamba scan, the vocabulary loss (softmax / KL over 49152 entries
a token), the optimizer, dtype casts, and the rest (norms, rotary, residuals, activations). MFU can only reach the
GEMMs' share of the step times their own efficiency, so the table says which group to shrink. It re-runs itself
under tcmalloc as the command line does (distill/allocator.py; HYBRID_ALLOCATOR=system keeps glibc, whose page
faults on fresh large buffers show as kernel time outside every op).

    python recipes/smollm2-135m/train_profile.py [--model smollm2-135m@attn=0.5] [--stage kd] [--batch 8]
        [--seq-len 512] [--variant bf16+chunked+teacher-bf16+teacher-packed] [--steps 2] [--out FILE.json]
"""
import argparse
import json
import tempfile
import time
from collections import defaultdict

import torch

from distill.evaluation.training import TrainBenchSettings, _Variant, _teacher_spec, bench_rows
from distill.flops import gemm_peak
from distill.loading import load_model

# op name -> group, by the first pattern it contains (the order matters: "mm" would catch "_mamba")
GROUPS = [
    ("scan", ("ssd", "selective_scan", "chunk_scan", "mamba", "cumsum", "segsum")),
    ("loss", ("log_softmax", "softmax", "kl_div", "logsumexp", "nll_loss", "cross_entropy")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "mkldnn", "onednn", "packed", "_mkl_linear", "scaled_dot_product", "flash_attention")),
    ("optimizer", ("adam", "_foreach", "clip_grad")),
    ("cast", ("aten::to", "aten::_to_copy", "aten::copy_")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, patterns in GROUPS:
        if any(p.lower() in low for p in patterns):
            return group
    return "other"


def main() -> None:
    from distill.allocator import rerun_under_tcmalloc
    from distill.evaluation.training import malloc_in_use
    rerun_under_tcmalloc()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m@attn=0.5")
    ap.add_argument("--stage", default="kd", choices=["kd", "sft"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--variant", default="bf16+chunked+teacher-bf16+teacher-packed")
    ap.add_argument("--steps", type=int, default=2, help="timed steps before the profiled ones (and profiled steps)")
    ap.add_argument("--out", default=None, help="write the grouped table as JSON here")
    ap.add_argument("--shapes", type=int, default=0, help="also list the N costliest (op, input shapes) pairs")
    a = ap.parse_args()
    s = TrainBenchSettings(model=a.model, stage=a.stage, batch=a.batch, seq_len=a.seq_len, steps=a.steps,
                           warmup=1, variants=[a.variant])
    student, tok, _ = load_model(s.model)
    student.requires_grad_(True)
    teacher = None
    if s.stage == "kd":
        teacher, _, _ = load_model(_teacher_spec(s))
        teacher.eval().requires_grad_(False)
    n_steps = 1 + 2 * a.steps
    rows = bench_rows(tok, student.config.vocab_size, s.batch, s.seq_len, s.batch * n_steps, s.seed)
    with tempfile.TemporaryDirectory() as folder:
        v = _Variant(a.variant, student, teacher, rows, s, folder)
        try:
            v.step(timed=False)  # warm-up
            for _ in range(a.steps):
                v.step(timed=True)
            median = sorted(v.times)[len(v.times) // 2]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                        record_shapes=a.shapes > 0) as prof:
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    v.step(timed=False)
                profiled = (time.perf_counter() - t0) / a.steps
        finally:
            v.close()
    tokens = s.batch * s.seq_len
    mfu = v.flops_per_token * tokens / median / gemm_peak(v.trainer.step_dtype())
    by_group: dict[str, float] = defaultdict(float)
    top = []
    for e in prof.key_averages():
        self_s = e.self_cpu_time_total / 1e6 / a.steps
        by_group[group_of(e.key)] += self_s
        top.append((self_s, e.key, e.count // a.steps))
    total = sum(by_group.values())
    # the optimizer's own ops (AdamW's per-parameter lerp_ / addcdiv_ / mul_ ...) share names with the model's, so its
    # time is read from its step's record, children included
    opt_s = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith("Optimizer.step")) / 1e6 / a.steps
    print(f"{a.model} {a.stage} {a.variant}, batch {a.batch} x {a.seq_len}: median step {median:.2f} s "
          f"({tokens / median:.0f} tokens/s, MFU {100 * mfu:.1f} %); profiled step {profiled:.2f} s, "
          f"{total:.2f} s of op self time; C allocator {malloc_in_use()}")
    print("\n| group | s a step | share |\n|---|---|---|")
    for g, t in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {t:.3f} | {100 * t / total:.1f} % |")
    print(f"\nthe optimizer step with its ops (counted in the groups above by op name): {opt_s:.3f} s a step")
    print("\n| op | group | calls a step | s a step |\n|---|---|---|---|")
    for t, name, calls in sorted(top, reverse=True)[:25]:
        print(f"| {name} | {group_of(name)} | {calls} | {t:.3f} |")
    if a.shapes:
        print("\n| op | input shapes | calls a step | s a step |\n|---|---|---|---|")
        shaped = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        for e in shaped[:a.shapes]:
            print(f"| {e.key} | {str(e.input_shapes)[:90]} | {e.count // a.steps} | "
                  f"{e.self_cpu_time_total / 1e6 / a.steps:.3f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"settings": vars(a), "allocator": malloc_in_use(), "median_step_s": median, "tokens_per_s": tokens / median, "mfu": mfu,
                       "profiled_step_s": profiled, "groups_s": dict(by_group), "optimizer_step_s": opt_s,
                       "ops": [{"op": n, "group": group_of(n), "calls": c, "self_s": t}
                               for t, n, c in sorted(top, reverse=True)]}, f, indent=1)


if __name__ == "__main__":
    main()
