#!/usr/bin/env bash
# Training speed of KD on SmolLM2-135M -> its 50 % hybrid (batch 8 x 512 tokens, every weight trained), the speed
# levers side by side in one run, each variant one optimizer step in turn; then whether the levers change the
# loss trajectory (50 steps from the same start at batch 2 x 128); then SFT and the GRPO update with rollouts.
# Where the CPU's bf16 GEMMs beat its float32 ones (AVX512-BF16 / AMX: distill.train.cpu_bf16_wins measures it)
# the bf16 variants join every list and the curves compare float32 with the fastest bf16 variant; on a CPU without
# them bf16 runs ~20x slower and stays out.
# Writes OUT/{kd,curves,sft,grpo}/bench_train.{json,csv,md,png} (OUT: runs/bench-train-smollm2).
set -euo pipefail
out=${1:-runs/bench-train-smollm2}
if python -c "import sys; from distill.train import cpu_bf16_wins; sys.exit(0 if cpu_bf16_wins() else 1)"; then
  kd="fp32 fp32+chunked+teacher-packed+packed bf16 bf16+chunked+teacher-bf16+teacher-packed"
  curves="fp32 bf16+chunked+teacher-bf16+teacher-packed"
  sft="fp32 bf16 bf16+chunked"
  grpo="bf16+chunked"
else
  kd="fp32 fp32+chunked+teacher-packed fp32+chunked+teacher-packed+packed"
  curves="fp32 fp32+chunked+teacher-packed+packed"
  sft="fp32 fp32+chunked+packed"
  grpo="fp32+chunked+packed"
fi
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 8 --seq-len 512 --warmup 1 --steps 2 \
  --variants $kd --out "$out/kd"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 2 --seq-len 128 --warmup 0 --steps 50 \
  --variants $curves --out "$out/curves"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage sft --batch 8 --seq-len 512 --warmup 1 --steps 2 \
  --variants $sft --out "$out/sft"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage grpo --batch 8 --seq-len 256 --warmup 1 --steps 2 \
  --variants $grpo --out "$out/grpo"
