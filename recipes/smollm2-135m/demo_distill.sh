#!/usr/bin/env bash
# The distillation demo on a 2-core CPU: SmolLM2-135M -> 50 % Mamba2 hybrid with two layer-selection strategies,
# each measured after transfer, align and KD. Writes runs/demo-distill/table.md.
set -euo pipefail
out=${1:-runs/demo-distill}
hybrid-distill distill --config recipes/smollm2-135m/distill.yaml --profile demo --out "$out/uniform"
hybrid-distill distill --config recipes/smollm2-135m/distill.yaml --profile demo --out "$out/leave-one-out" \
  --set select.strategy=leave-one-out --set "select.params={align_steps: 10}" --set data.source="$out/uniform/corpus.jsonl"
hybrid-distill summary "$out/uniform" "$out/leave-one-out" --out "$out/table.md"
