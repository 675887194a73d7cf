#!/usr/bin/env bash
# After the same GRPO budget for both (long_reasoning.sh RUN's pipeline up to rl-hybrid): the RL'd reasoner and the
# RL'd hybrid on the retention tasks (~200 and ~800-token traces, 16 held-out problems x 2, the settings of
# long_reasoning.sh's retention step), each paired against the model it started from (RUN/retention).
# Usage: rl_retention.sh RUN [OUT]   (about 15 min on a 2-core CPU)
set -euo pipefail
run=${1:?usage: rl_retention.sh RUN [OUT]}
out=${2:-$run/rl-eval}
hybrid-distill run recipes/smollm2-135m-long --profile demo --out "$run" --resume --until rl-hybrid
for t in 200 800; do
  for who in teacher hybrid; do
    d=$out/long-$t/rl-$who
    [ -f "$d/eval.json" ] || hybrid-distill eval --model "$run/rl-$who/final" --tasks long:test:tokens=$t:mod=10 \
      --n 16 --samples 2 --max-new-tokens $(( t * 5 / 4 + 64 )) --temperature 0.7 --batch-size 16 --out "$d" \
      --overwrite > /dev/null
  done
  # reasoner-first: RL starts from the reasoner and from the pipeline's hybrid (the last stage of the schedule, 25 %)
  hybrid-distill eval compare --runs "$run/retention/long-$t/reasoner" "$out/long-$t/rl-teacher" \
    --out-json "$out/compare-teacher-$t.json" | tee "$out/compare-teacher-$t.md"
  hybrid-distill eval compare --runs "$run/retention/long-$t/h25" "$out/long-$t/rl-hybrid" \
    --out-json "$out/compare-hybrid-$t.json" | tee "$out/compare-hybrid-$t.md"
done
