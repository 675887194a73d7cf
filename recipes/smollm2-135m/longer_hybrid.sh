#!/usr/bin/env bash
# A hybrid distilled longer than the demo (align 120 steps, KD 150 steps, demo profile otherwise), then the demo
# SFT, then GRPO at lr 3e-6 (rollouts at temperature 0.7, 40 steps, zero-variance groups dropped) with seeds 0, 1 and
# 2; held-out accuracy after SFT and after each GRPO run on 400 level-1 problems x 4 samples (the same problems
# and sampling seeds for every checkpoint), then each GRPO run compared with the SFT checkpoint and with the first
# seed, problem by problem.
# About an hour and a half on a 2-core CPU, plus about 30 minutes per GRPO seed beyond the first.
# Usage: longer_hybrid.sh OUT [SEEDS]   (defaults runs/h50-long, "0 1 2")
set -uo pipefail
X=${1:-runs/h50-long}
SEEDS=${2:-0 1 2}
R=recipes/smollm2-135m
[ -f $X/distill/final/config.json ] || hybrid-distill distill --config $R/distill.yaml --profile demo \
  --set align.steps=120 --set kd.steps=150 --out $X/distill --resume
[ -f $X/sft/final/config.json ] || hybrid-distill sft --config $R/sft.yaml --profile demo \
  --set model=$X/distill/final --out $X/sft --resume
ev() { [ -f "$2/eval.json" ] || hybrid-distill eval --model "$1" --tasks synthetic:test:levels=1 --n 400 \
  --samples 4 --max-new-tokens 64 --temperature 0.7 --out "$2" --overwrite > /dev/null; }
ev $X/sft/final $X/eval-sft
for s in $SEEDS; do
  suffix=""; [ "$s" = 0 ] || suffix="-seed$s"
  [ -f $X/rl$suffix/final/config.json ] || hybrid-distill rl --config $R/rl.yaml --profile demo \
    --set model=$X/sft/final --set lr=3.0e-6 --set temperature=0.7 --set max_steps=40 --set save_steps=20 \
    --set drop_zero_variance_groups=true --set seed=$s --out $X/rl$suffix --resume
  ev $X/rl$suffix/final $X/eval-rl$suffix
done
runs=""
for s in $SEEDS; do suffix=""; [ "$s" = 0 ] || suffix="-seed$s"; runs="$runs $X/eval-rl$suffix"; done
hybrid-distill eval compare --runs $X/eval-sft $runs --out-json $X/compare.json
hybrid-distill eval compare --runs $runs  # seed-to-seed: the run-to-run noise, paired
