#!/usr/bin/env bash
# The KD step (SmolLM2-135M -> its 50 % hybrid, batch 8 x 512, bf16 autocast, chunked KL, teacher bf16 + packed) under
# glibc's malloc and under tcmalloc, each in its own process (an allocator is chosen when a process starts), the two
# alternated REPS times so drift of the machine lands on both. Each run writes OUT/NN-ALLOCATOR/bench_train.json
# with the step's tokens/s, MFU, page faults and the share of its CPU time in the kernel; then the table
# (recipes/smollm2-135m/allocator_table.py). Needs tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4).
set -euo pipefail
out=${1:-runs/bench-allocator}
reps=${REPS:-2}
variant=bf16+chunked+teacher-bf16+teacher-packed
n=0
for i in $(seq "$reps"); do
  for alloc in system tcmalloc; do
    n=$((n + 1))
    HYBRID_ALLOCATOR=$alloc hybrid-distill bench train --model smollm2-135m@attn=0.5 --stage kd --batch 8 \
      --seq-len 512 --warmup 1 --steps 3 --variants "$variant" --out "$out/$(printf %02d $n)-$alloc" --overwrite
  done
done
python recipes/smollm2-135m/allocator_table.py "$out"/*/bench_train.json
