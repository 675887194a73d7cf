"""GRPO's policy log-probabilities on the CPU: TRL's fused LM head (`loss_chunk: 0`, every position of prompt and
completion scored in float32 tiles) against ours (`loss_chunk: 1024`, the completion positions only), each in
float32 (GRPO's precision on the CPU today) and under bf16 autocast.

The model work of one GRPO update, `_get_per_token_logps_and_entropies` with its backward, on a batch like the
long recipe's (rl.yaml: 8 completions of up to 512 tokens after the task's chat prompts), with the
long-reasoning task's real prompts and random completion tokens (their values do not change the work). Variants
interleaved, the first round a warm-up; prints each step, the median of each, and the ratios.

Usage (the machine alone; about 5 minutes on 2 cores):
    python recipes/smollm2-135m/grpo_loss_bench.py [--model smollm2-135m] [--completion 512] [--reps 3]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

from distill.data import prompt_ids
from distill.loading import load_model
from distill.posttrain.rl import RLArgs, make_trainer, rl_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="long:train:tokens=100..300:mod=10")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--completion", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.reps < 2:
        ap.error(f"--reps {a.reps}: need at least 2 (the first round is a warm-up)")
    model, tok, _ = load_model(a.model, for_training=True)
    rows = rl_rows(a.data, 64)
    out = tempfile.mkdtemp()
    trainers = {chunk: make_trainer(model, tok, rows, RLArgs(model=a.model, out=f"{out}/{chunk}", max_steps=1,
                                                              batch_size=a.batch, num_generations=a.batch // 2,
                                                              loss_chunk=chunk, temperature=1.0))
                for chunk in (0, 1024)}
    prompts = [prompt_ids(tok, r["prompt"][0]["content"]) for r in rows[:a.batch]]  # the chat prompt, as rolled out
    width = max(map(len, prompts))
    g = torch.Generator().manual_seed(0)
    ids = torch.full((a.batch, width + a.completion), tok.pad_token_id or 0)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left-padded prompts, then the completion
        ids[i, width - len(p):width] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids[:, width:] = torch.randint(0, model.config.vocab_size, (a.batch, a.completion), generator=g)
    print(f"{a.model}: {a.batch} rows of {width} prompt + {a.completion} completion tokens, "
          f"{torch.get_num_threads()} threads")
    model.train()
    variants = {(c, p): (trainers[c], p) for p in ("fp32", "bf16") for c in (0, 1024)}
    times: dict = {v: [] for v in variants}
    for rep in range(a.reps):
        for (chunk, prec), (tr, _) in variants.items():
            model.zero_grad(set_to_none=True)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()
            t = time.perf_counter()
            with ctx:
                logp, ent, _ = tr._get_per_token_logps_and_entropies(model, ids, mask, a.completion,
                                                                     compute_entropy=True)
            logp.sum().backward()
            times[chunk, prec].append(time.perf_counter() - t)
            print(f"rep {rep} loss_chunk={chunk} {prec}: {times[chunk, prec][-1]:.2f} s, "
                  f"mean logp {logp[mask[:, width:] > 0].mean().item():.4f}", flush=True)
    med = {v: statistics.median(t[1:]) for v, t in times.items()}
    base = med[0, "fp32"]
    for (chunk, prec), m in med.items():
        name = "TRL's fused head" if chunk == 0 else "chunked, completions only"
        print(f"median after the warm-up: {name:26s} {prec}: {m:6.2f} s  ({base / m:.2f}x TRL fp32)")


if __name__ == "__main__":
    from distill.allocator import rerun_under_tcmalloc
    rerun_under_tcmalloc()  # timed as the command line runs: on tcmalloc where installed
    main()
