#!/usr/bin/env bash
# The point of a hybrid, on the embedded teacher: a reasoner for long running computations (SmolLM2-135M-Instruct
# fine-tuned on `long` traces of 100-1600 tokens), converted into 50 % and 25 % Mamba2 hybrids on its own answers
# (reasoner-first, recipes/smollm2-135m-long), then measured, the hybrids straight from conversion against the
# reasoner they came from, on held-out problems:
#   1. the time budget at ~1500-token traces (bench.yaml's problems, samples and budgets): coverage and majority vote
#      against seconds, the reasoner against the 50 % hybrid (the 25 % one kept a tenth of the reasoner's pass@1 at
#      ~800 tokens in the first measurement; its retention below says where it stands);
#   2. retention: pass@1 of each hybrid over the reasoner's, paired over problems, at traces of ~200, ~800 and
#      ~1500 tokens; where the time budget drew a model on the same problems (reasoner and 50 % hybrid at ~1500),
#      its draws serve (more samples per problem), and the table says so;
#   3. the recall probe against distance (what replacing attention costs);
#   4. the rest of the pipeline: the same GRPO budget for both, eval, bench, report.
# Every step is resumable: a rerun skips what is finished (an interrupted evaluation is redone, interrupted
# time-budget draws continue).
# Usage: long_reasoning.sh [OUT] [PROFILE]   (PROFILE: demo, 4-6 h on a 2-core CPU with traces up to 1600 tokens; quick, minutes)
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
# 1. time budget, with bench.yaml's settings for this profile
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
tb_tasks=${tb[1]}
[ -f "$out/time-budget/time_budget.json" ] || hybrid-distill eval time-budget --models "$reasoner" "$h50" "${tb[@]}" \
  --out "$out/time-budget" --resume
# 2-3. retention and recall
evaluate() {  # model, tasks, max new tokens, out dir
  [ -f "$4/eval.json" ] || hybrid-distill eval --model "$1" --tasks "$2" --n $n --samples $samples \
    --max-new-tokens "$3" --temperature 0.7 --batch-size 16 --out "$4" --overwrite > /dev/null
}
for t in $lengths; do
  max_new=$(( t * 5 / 4 + 64 ))
  for m in reasoner h50 h25; do
    if [ "long:test:tokens=$t:mod=10" = "$tb_tasks" ] && [ "$m" != h25 ]; then continue; fi  # drawn in 1.
    evaluate "${!m}" "long:test:tokens=$t:mod=10" $max_new "$out/retention/long-$t/$m"
  done
done
for d in $distances; do
  for m in reasoner h50 h25; do
    evaluate "${!m}" "recall:test:distance=$d" 64 "$out/retention/recall-$d/$m"
  done
done
python recipes/smollm2-135m/retention_table.py "$out" --lengths $lengths --distances $distances \
  --time-budget "$out/time-budget"
# 4. the same GRPO budget, eval, bench, report
hybrid-distill run $R --profile "$profile" --out "$out" --resume
