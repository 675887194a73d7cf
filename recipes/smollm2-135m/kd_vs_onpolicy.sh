#!/usr/bin/env bash
# Offline KD against on-policy distillation at equal training time, on the long-reasoning reasoner of
# long_reasoning.sh (RUN: its output folder, which holds the reasoner and the corpus of its answers). Both branches
# convert the reasoner into the same 50 % Mamba2 hybrid (same transfer and align, same seed), then train for the
# same SECONDS of optimizer steps: offline KD on the reasoner's answers; on-policy distillation on the hybrid's
# own samples of the task's prompts (sampling counted in its time); or offline KD for the first half of SECONDS and
# on-policy for the second (on-policy refines a student that already writes the task: straight after align the
# hybrid's samples are loops to the length limit). Then held-out pass@1 at ~200 and ~800-token traces, paired
# against the reasoner, and the held-out KL of each branch; the third branch's model after its offline half
# (kd-half) is evaluated too, and paired against the branch's end: what its on-policy half changed. All train on
# 2 rows a step: the on-policy rows are prompt + up to 1900 sampled tokens, as long as offline KD's 2560-token rows
# (about 17 GB of the 24 GB machine in training); 4 such rows a step ran out of memory.
# Usage: kd_vs_onpolicy.sh RUN [OUT] [SECONDS]   (default OUT=RUN/kd-vs-onpolicy, SECONDS=900: about 1.5 h in all)
set -euo pipefail
run=${1:?usage: kd_vs_onpolicy.sh RUN [OUT] [SECONDS]}
out=${2:-$run/kd-vs-onpolicy}
seconds=${3:-900}
reasoner=$run/sft-teacher/final
R=recipes/smollm2-135m-long/distill.yaml
# the attention layers the run's own selection keeps at 50 % (RUN/distill/select.json), so both branches convert
# the same hybrid as the run's first stage without selecting again
keep=$(python -c "import json, sys; from distill.conversion.select import kept_layers
print(kept_layers(json.load(open(sys.argv[1]))['order'], 0.5))" "$run/distill/select.json" | tr -d ' ')
common=(--config $R --profile demo --set teacher="$reasoner" --set "schedule=[0.5]" --set data.source="$run/distill/corpus.jsonl"
        --set data.format=prompt_completion --set select.strategy=explicit --set "select.params.layers=$keep" --resume)
hybrid-distill distill "${common[@]}" --set kd.steps=100000 --set kd.max_seconds=$seconds --set kd.save_every=5 \
  --out "$out/offline-kd"
onpolicy=(--set onpolicy.steps=100000 --set onpolicy.prompts=long:train:tokens=100..1600:mod=10 --set onpolicy.n=512
          --set onpolicy.max_new_tokens=1900 --set onpolicy.batch_size=2 --set onpolicy.lr=2.0e-4
          --set onpolicy.save_every=5)
hybrid-distill distill "${common[@]}" --set kd.steps=0 "${onpolicy[@]}" --set onpolicy.max_seconds=$seconds \
  --out "$out/onpolicy"
hybrid-distill distill "${common[@]}" --set kd.steps=100000 --set kd.max_seconds=$(( seconds / 2 )) \
  --set kd.save_every=5 "${onpolicy[@]}" --set onpolicy.max_seconds=$(( seconds - seconds / 2 )) \
  --out "$out/kd-then-onpolicy"
# kd-half: the third branch's model after its offline half (before on-policy), the control for what on-policy adds
declare -A model=([offline-kd]=$out/offline-kd/final [onpolicy]=$out/onpolicy/final
                  [kd-then-onpolicy]=$out/kd-then-onpolicy/final [kd-half]=$out/kd-then-onpolicy/stage0/kd/model)
for t in 200 800; do
  for m in offline-kd onpolicy kd-half kd-then-onpolicy; do
    d=$out/eval-$t/$m
    [ -f "$d/eval.json" ] || hybrid-distill eval --model "${model[$m]}" --tasks long:test:tokens=$t:mod=10 --n 16 \
      --samples 2 --max-new-tokens $(( t * 5 / 4 + 64 )) --out "$d" --overwrite > /dev/null
  done
  hybrid-distill eval compare --runs "$run/retention/long-$t/reasoner" "$out/eval-$t/offline-kd" \
    "$out/eval-$t/onpolicy" "$out/eval-$t/kd-half" "$out/eval-$t/kd-then-onpolicy" --out-json "$out/compare-$t.json" \
    | tee "$out/compare-$t.md"
  hybrid-distill eval compare --runs "$out/eval-$t/kd-half" "$out/eval-$t/kd-then-onpolicy" \
    --out-json "$out/compare-onpolicy-half-$t.json" | tee "$out/compare-onpolicy-half-$t.md"
done
hybrid-distill summary "$out/offline-kd" "$out/onpolicy" "$out/kd-then-onpolicy" --out "$out/summary.md"
