"""SFT's loss on the CPU: TRL's own (its fused LM head, `loss_chunk: 0`) against our chunked NLL (`loss_chunk: 1024`).

One training step's forward and backward each (no optimizer step), on the same packed 4 x 1024-token row of the
long-reasoning reasoner's data, with SmolLM2-135M-Instruct in bf16 autocast (as accelerate runs the step in
`train()`); variants interleaved A B A B A B, the first pair a warm-up. Prints each step and the median speed-up.

Usage (the machine alone; about 4 minutes on 2 cores):
    python recipes/smollm2-135m/sft_loss_bench.py [--model smollm2-135m] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from distill.loading import load_model
from distill.posttrain.sft import SFTArgs, make_trainer, rows_from


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="long:train:tokens=100..800:mod=10")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    model, tok, _ = load_model(a.model, for_training=True)
    rows = rows_from(a.data, 64)
    out = tempfile.mkdtemp()
    trainers = {}
    for chunk in (0, 1024):
        args = SFTArgs(model=a.model, out=f"{out}/{chunk}", max_steps=1, batch_size=4, max_length=1024,
                       loss_chunk=chunk)
        trainers[chunk] = make_trainer(model, tok, rows, args)
        trainers[chunk].current_gradient_accumulation_steps = 1  # set by train()'s loop, which is not run here
    batch = next(iter(trainers[0].get_train_dataloader()))
    print(f"{a.model}: packed row of {batch['input_ids'].shape[1]} tokens, attention "
          f"{model.config._attn_implementation}, {torch.get_num_threads()} threads")
    model.train()
    times: dict[int, list[float]] = {0: [], 1024: []}
    for rep in range(a.reps):
        for chunk, tr in trainers.items():
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = tr.training_step(model, dict(batch), None)
            times[chunk].append(time.perf_counter() - t)
            print(f"rep {rep} loss_chunk={chunk}: {times[chunk][-1]:.2f} s, loss {loss.item():.5f}", flush=True)
    med = {c: statistics.median(v[1:]) for c, v in times.items()}
    print(f"median after the warm-up: TRL's loss {med[0]:.2f} s, chunked {med[1024]:.2f} s, "
          f"speed-up {med[0] / med[1024]:.2f}x")


if __name__ == "__main__":
    from distill.allocator import rerun_under_tcmalloc
    rerun_under_tcmalloc()  # timed as the command line runs: on tcmalloc where installed
    main()
