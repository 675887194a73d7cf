#!/usr/bin/env bash
# Throughput of SmolLM2-135M vs hybrids made from it (transfer-initialised: enough for speed), one engine, one run;
# long contexts again with the models stepped in turn; short contexts; the teacher with and without oneDNN-packed
# linears; then accuracy under time budgets on synthetic math.
# Writes runs/bench-smollm2/bench.{json,csv,png}, bench.* under interleaved/, crossover/, prepack/, and
# time_budget.{json,png,md} under time-budget/ (every command its own folder: a non-empty --out is refused).
set -euo pipefail
out=${1:-runs/bench-smollm2}
hybrid-distill bench throughput \
  --models smollm2-135m smollm2-135m@attn=0.5 smollm2-135m@attn=0.25 smollm2-135m@attn=0 \
  --batch 1 16 --prompt-len 256 --gen-len 256 --context 128 256 512 2048 4096 --out "$out"
# the long-context ratios with every model loaded and stepped in turn (machine drift lands on all models alike)
hybrid-distill bench throughput --models smollm2-135m smollm2-135m@attn=0.5 smollm2-135m@attn=0.25 smollm2-135m@attn=0 \
  --batch 16 --prompt-len 64 --gen-len 16 --no-hf --context 2048 4096 --context-steps 24 --interleave \
  --out "$out/interleaved"
# where the 50 % hybrid overtakes the teacher: short contexts, 32 steps each (the median of more steps: less noise)
hybrid-distill bench throughput --models smollm2-135m smollm2-135m@attn=0.5 --batch 16 --prompt-len 64 --gen-len 16 \
  --context 64 128 256 512 1024 --context-steps 32 --no-hf --out "$out/crossover"
# where the engine's margin over HF generate comes from: the same engine with F.linear (prepack off) beside it
hybrid-distill bench throughput --models smollm2-135m --batch 1 16 --prompt-len 256 --gen-len 256 --prepack on off \
  --out "$out/prepack"
hybrid-distill eval time-budget --models smollm2-135m "${2:-smollm2-135m@attn=0.25}" \
  --tasks synthetic:test:levels=1 --n 12 --samples 4 --max-new-tokens 96 --batch-candidates 4 16 \
  --budgets 0.5 1 2 4 8 16 --out "$out/time-budget"
