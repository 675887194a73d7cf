#!/usr/bin/env bash
# GRPO settings tried on one SFT checkpoint, each evaluated on 120 held-out level-1 problems x 4 samples
# (temperature 0.7), next to the SFT checkpoint itself. Each run: the demo profile of rl.yaml with 40 steps of
# 2 prompts x 8 completions, rollouts at temperature 0.7, zero-variance groups dropped; the learning rate varies.
# Usage: grpo_sweep.sh SFT_CHECKPOINT OUT   (e.g. runs/demo-sft-rl/hybrid/sft/final runs/grpo-sweep)
set -euo pipefail
sft=${1:?SFT checkpoint}
out=${2:-runs/grpo-sweep}
evaluate() {  # model, out dir
  [ -f "$2/eval.json" ] || hybrid-distill eval --model "$1" --tasks synthetic:test:levels=1 --n 120 --samples 4 \
    --max-new-tokens 64 --temperature 0.7 --out "$2" --overwrite > /dev/null
}
evaluate "$sft" "$out/eval-sft"
for lr in 1.0e-5 3.0e-6; do
  d=$out/lr-$lr
  [ -f "$d/final/config.json" ] || hybrid-distill rl --config recipes/smollm2-135m/rl.yaml --profile demo \
    --set model="$sft" --set lr=$lr --set temperature=0.7 --set max_steps=40 --set save_steps=20 \
    --set drop_zero_variance_groups=true --out "$d" --resume
  evaluate "$d/final" "$out/eval-lr-$lr"
done
for f in "$out"/eval-*/eval.json; do
  python -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[1], f\"pass@1 {r['pass@1']:.3f} \
± {r['pass@1_se']:.3f}  maj@4 {r['maj@4']:.3f}  pass@4 {r['pass@4']:.3f}\")" "$f"
done
