#!/usr/bin/env bash
# SFT then GRPO on synthetic math, for the teacher (SmolLM2-135M) and a 50 % hybrid distilled from it, with the
# same budgets; held-out accuracy (level-1 synthetic test split, never seen in training) before SFT, after SFT
# and after GRPO. GRPO runs twice on the hybrid (seeds 0 and 1) to measure run-to-run noise.
# Usage: demo_sft_rl.sh OUT HYBRID   (HYBRID: a distilled hybrid, e.g. from
#   hybrid-distill distill --config recipes/smollm2-135m/distill.yaml --profile demo --out runs/demo-h50)
set -euo pipefail
out=${1:-runs/demo-sft-rl}
hybrid=${2:-runs/demo-h50/final}
R=recipes/smollm2-135m
evaluate() {  # model dir-or-spec, out dir (no eval.json there: an interrupted evaluation, redone)
  [ -f "$2/eval.json" ] || hybrid-distill eval --model "$1" --tasks synthetic:test:levels=1 --n 60 --samples 4 \
    --max-new-tokens 64 --temperature 0.7 --out "$2" --overwrite > /dev/null
}
for name in teacher hybrid; do
  model=smollm2-135m; [ "$name" = hybrid ] && model=$hybrid
  d=$out/$name
  evaluate "$model" "$d/eval-base"
  [ -f "$d/sft/final/config.json" ] || hybrid-distill sft --config $R/sft.yaml --profile demo --set model="$model" \
    --out "$d/sft" --resume
  evaluate "$d/sft/final" "$d/eval-sft"
  seeds="0"; [ "$name" = hybrid ] && seeds="0 1"
  for s in $seeds; do
    [ -f "$d/rl-$s/final/config.json" ] || hybrid-distill rl --config $R/rl.yaml --profile demo \
      --set model="$d/sft/final" --set seed=$s --out "$d/rl-$s" --resume
    evaluate "$d/rl-$s/final" "$d/eval-rl-$s"
  done
done
python - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
lines = ["| model | stage | pass@1 (± s.e.) | maj@4 | pass@4 |", "|---|---|---|---|---|"]
for name in ("teacher", "hybrid"):
    for stage in ["base", "sft"] + sorted(os.path.basename(p)[8:] for p in glob.glob(f"{out}/{name}/eval-rl-*")):
        key = stage if stage in ("base", "sft") else f"rl-{stage}"
        r = json.load(open(f"{out}/{name}/eval-{key}/eval.json"))
        label = {"base": "before SFT", "sft": "after SFT"}.get(stage, f"after GRPO (seed {stage})")
        lines.append(f"| {name} | {label} | {r['pass@1']:.3f} ± {r['pass@1_se']:.3f} | {r['maj@4']:.3f} | "
                     f"{r['pass@4']:.3f} |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
