#!/usr/bin/env bash
# Which attention layers matter for long reasoning and for recall: the long-reasoning reasoner of
# long_reasoning.sh (RUN) converted into 25 % hybrids (8 of 30 layers keep attention) with uniform, leave-one-out
# and KL-guided layer selection, the same transfer / align / KD budget each (recipes/smollm2-135m-long demo
# profile, on the reasoner's answers of RUN), then held-out pass@1 at ~800-token traces and the recall probe at
# distance 256, paired against the reasoner.
# Usage: selection_long.sh RUN [OUT]   (about 2.5 h on a 2-core CPU: each branch 25-30 min of conversion and 10 of
# evaluation, KL-guided 50 min more for its selection)
set -euo pipefail
run=${1:?usage: selection_long.sh RUN [OUT]}
out=${2:-$run/selection}
reasoner=$run/sft-teacher/final
# leave-one-out scores each layer alone, whatever the ratio: where RUN's own conversion selected that way (its
# select.json), its scores give the 25 % selection and are not computed again (25 min)
loo=$(python -c "import json, sys; from distill.conversion.select import kept_layers
d = json.load(open(sys.argv[1]))
print(kept_layers(d['order'], 0.25) if d['strategy'] == 'leave-one-out' else '')" "$run/distill/select.json" | tr -d ' ')
for s in uniform leave-one-out kl-guided; do
  how=(--set select.strategy=$s)
  if [ $s = leave-one-out ] && [ -n "$loo" ]; then how=(--set select.strategy=explicit --set "select.params.layers=$loo"); fi
  # KL-guided trains the all-Mamba student once and then 30 times briefly: at this budget 2 KD steps of 2 rows per
  # restored layer (about 75 s each with its evaluation), a row at a time (4 rows of 2560 tokens at once ran out of 24 GB)
  if [ $s = kl-guided ]; then how+=(--set select.params.kd_steps=2 --set select.params.kd_rows=2 --set select.params.micro_rows=1); fi
  hybrid-distill distill --config recipes/smollm2-135m-long/distill.yaml --profile demo --set teacher="$reasoner" \
    --set "schedule=[0.25]" "${how[@]}" --set data.source="$run/distill/corpus.jsonl" \
    --set data.format=prompt_completion --out "$out/$s" --resume
  for task in long:test:tokens=800:mod=10 recall:test:distance=256; do
    d=$out/eval/${task//[:=]/-}/$s
    [ -f "$d/eval.json" ] || hybrid-distill eval --model "$out/$s/final" --tasks $task --n 16 --samples 2 \
      --max-new-tokens 1064 --out "$d" --overwrite > /dev/null
  done
done
for task in long-test-tokens-800-mod-10 recall-test-distance-256; do
  base=$run/retention/${task/-test-tokens-/-}; base=${base/-mod-10/}; base=${base/-test-distance-/-}/reasoner
  hybrid-distill eval compare --runs "$base" "$out/eval/$task/uniform" "$out/eval/$task/leave-one-out" \
    "$out/eval/$task/kl-guided" --out-json "$out/compare-$task.json" | tee "$out/compare-$task.md"
done
hybrid-distill summary "$out/uniform" "$out/leave-one-out" "$out/kl-guided" --out "$out/summary.md"
