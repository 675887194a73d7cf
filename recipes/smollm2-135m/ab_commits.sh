#!/usr/bin/env bash
# A code change's effect on training speed: `hybrid-distill bench train` at two commits, in processes alternated
# A B A B ... (ROUNDS of each), so the machine's drift lands on both alike. Each commit is checked out in its own
# worktree under OUT/; its bench_train.{json,md} go to OUT/<label>-<round>/. Prints tokens/s and the loss of every
# step of each run (equal losses: the change kept the arithmetic).
# Usage: ab_commits.sh OUT REV_A REV_B [ROUNDS] [-- bench train arguments]
#   default arguments: the KD step of bench_train.sh's levered bf16 variant (batch 8 x 512)
#   REV_B may be "worktree": this checkout's files as they are, uncommitted changes included
set -euo pipefail
out=${1:?usage: ab_commits.sh OUT REV_A REV_B [ROUNDS] [-- bench train arguments]}
a=${2:?REV_A}
b=${3:?REV_B}
rounds=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--model smollm2-135m@attn=0.5 --stage kd --batch 8 --seq-len 512 --warmup 2 --steps 3
                                --variants bf16+chunked+teacher-bf16+teacher-packed)
root=$(git rev-parse --show-toplevel)
mkdir -p "$out"
where() {  # a folder holding the code of revision $1
  if [ "$1" = worktree ]; then echo "$root"; return; fi
  local dir
  dir=$(realpath -m "$out/src-$(git rev-parse --short "$1")")
  [ -d "$dir" ] || git -C "$root" worktree add -q --detach "$dir" "$1"
  echo "$dir"
}
src_a=$(where "$a")
src_b=$(where "$b")
for i in $(seq 1 "$rounds"); do
  for side in a b; do
    src=src_$side
    label=$([ $side = a ] && echo "$a" || echo "$b")
    dest=$out/$label-$i
    (cd "${!src}" && PYTHONPATH="${!src}" hybrid-distill bench train "${args[@]}" --out "$(realpath -m "$dest")" \
      > "$(realpath -m "$dest").log" 2>&1)
    python - "$dest/bench_train.json" "$label" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rows"]
for row in r:
    losses = " ".join(f"{x:.4f}" for x in row.get("losses", []))
    print(f"{sys.argv[2]} round {sys.argv[3]}: {row['variant']} {row['tokens_per_s']:.0f} tokens/s, losses {losses}")
PY
  done
done
