"""Attention over packed rows: transformers' `sdpa` (a dense block-diagonal mask) against `sdpa_docs` (causal SDPA per
document, hybrid/attention.py), one forward + backward of SmolLM2-135M-Instruct in bf16 autocast per call, variants
interleaved, on three kinds of rows:
  sft      the long-reasoning reasoner's first SFT batch: one padding-free row of 4 x 1024 tokens (4-8 documents)
  kd512    `bench train`'s rows, 8 x 512 tokens of short task documents (~7 a row)
  kd1024   the same documents in 4 x 1024-token rows (~13 a row)
The per-document path is forced for every row here (MIN_LENGTH = 1), to measure it where the default keeps the mask.

Usage (the machine alone; about 6 minutes on 2 cores):
    python recipes/smollm2-135m/packed_attention_bench.py [--reps 2] [--cases sft kd512 kd1024]
"""
from __future__ import annotations

import argparse
import time

import torch

import hybrid.attention
from distill.evaluation.training import bench_rows
from distill.loading import load_model
from distill.posttrain.sft import SFTArgs, make_trainer, rows_from


def sft_row(model, tok) -> dict:
    args = SFTArgs(out="/tmp/packed-attention-bench", batch_size=4, max_length=1024)
    trainer = make_trainer(model, tok, rows_from("long:train:tokens=100..800:mod=10", 64), args)
    b = next(iter(trainer.get_train_dataloader()))
    return {"input_ids": b["input_ids"], "position_ids": b["position_ids"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cases", nargs="*", default=["sft", "kd512", "kd1024"])
    a = ap.parse_args()
    hybrid.attention.MIN_LENGTH = 1
    model, tok, _ = load_model("smollm2-135m", for_training=True)
    model.train()
    for case in a.cases:
        if case == "sft":
            batch = sft_row(model, tok)
        else:
            rows, length = (8, 512) if case == "kd512" else (4, 1024)
            r = bench_rows(tok, model.config.vocab_size, rows, length, rows, 0)
            batch = {"input_ids": r["input_ids"], "position_ids": r["position_ids"]}
        docs = [(p == 0).sum().item() for p in batch["position_ids"]]
        times = {"sdpa": [], hybrid.attention.NAME: []}
        for _ in range(a.reps):
            for impl in times:
                model.set_attn_implementation(impl)
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(**batch, use_cache=False).logits
                logits.float().logsumexp(-1).mean().backward()
                times[impl].append(time.perf_counter() - t)
        print(f"{case}: rows {list(batch['input_ids'].shape)}, documents per row {docs}: "
              + ", ".join(f"{k} {' '.join(f'{x:.1f}' for x in v)} s" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    from distill.allocator import rerun_under_tcmalloc
    rerun_under_tcmalloc()  # timed as the command line runs: on tcmalloc where installed
    main()
