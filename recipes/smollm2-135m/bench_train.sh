#!/usr/bin/env bash
# Training speed of KD on SmolLM2-135M -> its 50 % hybrid (batch 8 x 512 tokens, every weight trained), the speed
# levers side by side in one run, each variant one optimizer step in turn; then whether the levers change the
# loss trajectory (50 steps from the same start at batch 2 x 128, float32 against the levers); then SFT and the
# GRPO update with rollouts. A machine whose CPU has fast bf16 GEMMs (AVX512-BF16 / AMX) should add `bf16` and
# `bf16+chunked+teacher-bf16+teacher-packed` to the first list: on one without them bf16 runs ~20x slower.
# Writes runs/bench-train-smollm2/{kd,curves,sft,grpo}/bench_train.{json,csv,md,png}.
set -euo pipefail
out=${1:-runs/bench-train-smollm2}
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 8 --seq-len 512 --warmup 1 --steps 2 \
  --variants fp32 fp32+chunked+teacher-packed fp32+chunked+teacher-packed+packed --out "$out/kd"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 2 --seq-len 128 --warmup 0 --steps 50 \
  --variants fp32 fp32+chunked+teacher-packed+packed --out "$out/curves"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage sft --batch 8 --seq-len 512 --warmup 1 --steps 2 \
  --variants fp32 fp32+chunked+packed --out "$out/sft"
hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage grpo --batch 8 --seq-len 256 --warmup 1 --steps 2 \
  --variants fp32+chunked+packed --out "$out/grpo"
