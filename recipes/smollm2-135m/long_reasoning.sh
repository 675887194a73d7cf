#!/usr/bin/env bash
# The point of a hybrid, on the embedded teacher: a reasoner for long running computations (SmolLM2-135M-Instruct
# fine-tuned on `long` traces of 100-800 tokens), converted into 50 % and 25 % Mamba2 hybrids on its own answers
# (reasoner-first, recipes/smollm2-135m-long), then measured:
#   1. the pipeline (reasoner SFT -> conversion -> the same GRPO budget -> eval -> bench -> report);
#   2. retention: pass@1 of each hybrid over the reasoner's, paired over problems, at traces of ~200, ~800 and
#      ~1500 tokens (held-out problems; the hybrids straight from conversion against the reasoner they came from);
#   3. the recall probe against distance (what replacing attention costs);
#   4. the time budget at ~1500-token traces: the reasoner against both hybrids as converted (bench.yaml's settings).
# Retention is measured as soon as the hybrids exist (`run --until distill`); the rest of the pipeline follows.
# Every step is resumable: a rerun skips what is finished (an interrupted evaluation is redone).
# Usage: long_reasoning.sh [OUT] [PROFILE]   (PROFILE: demo, about 2 h on a 2-core CPU; quick, minutes)
set -euo pipefail
out=${1:-runs/long-demo}
profile=${2:-demo}
R=recipes/smollm2-135m-long
if [ "$profile" = quick ]; then n=4; samples=1; lengths="200"; distances="64"; else
  n=16; samples=2; lengths="200 800 1500"; distances="64 256 1024"; fi

hybrid-distill run $R --profile "$profile" --out "$out" --resume --until distill

reasoner=$out/sft-teacher/final
h50=$out/distill/stage0/kd/model
h25=$out/distill/final
evaluate() {  # model, tasks, max new tokens, out dir
  [ -f "$4/eval.json" ] || hybrid-distill eval --model "$1" --tasks "$2" --n $n --samples $samples \
    --max-new-tokens "$3" --temperature 0.7 --batch-size 16 --out "$4" --overwrite > /dev/null
}
# the cheap measurements first: the recall probe (64 new tokens), then traces from short to long
for d in $distances; do
  for m in reasoner h50 h25; do
    evaluate "${!m}" "recall:test:distance=$d" 64 "$out/retention/recall-$d/$m"
  done
done
for t in $lengths; do
  max_new=$(( t * 5 / 4 + 64 ))
  for m in reasoner h50 h25; do
    evaluate "${!m}" "long:test:tokens=$t:mod=10" $max_new "$out/retention/long-$t/$m"
  done
done
python recipes/smollm2-135m/retention_table.py "$out" --lengths $lengths --distances $distances
# 4. time budget on the bench recipe's held-out long problems: the reasoner against both hybrids, as converted,
#    coverage and majority vote vs seconds (budgets: multiples of the reasoner's seconds per sample; resumable)
read -r -a tb < <(python - "$R/bench.yaml" "$profile" <<'PY'
import sys
from distill.pipeline import BenchRecipe
from distill.recipe import load_recipe
b = load_recipe(sys.argv[1], cls=BenchRecipe, profile=sys.argv[2], overrides=[])
print("--tasks", b.tasks, "--n", b.n, "--samples", b.samples, "--max-new-tokens", b.max_new_tokens, "--temperature",
      b.temperature, "--top-p", b.top_p, "--max-samples", b.max_samples, "--budgets", *b.budgets,
      "--batch-candidates", *b.batch_candidates)
PY
)
[ -f "$out/time-budget/time_budget.json" ] || hybrid-distill eval time-budget --models "$reasoner" "$h50" "$h25" \
  "${tb[@]}" --out "$out/time-budget" --resume
hybrid-distill run $R --profile "$profile" --out "$out" --resume  # the same GRPO budget, eval, bench, report
