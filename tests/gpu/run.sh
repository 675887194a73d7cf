#!/usr/bin/env bash
# The one script for a lent GPU machine: build the CUDA kernels, run the GPU tests, run the GPU decode benchmark
# (each model with the eager decode step and with the CUDA-graph step, side by side), the compiled decode step
# against the CUDA-graph one, and the training-step benchmark in bf16 (KD, SmolLM2-shaped random teacher).
# Results land in $OUT (build.log, tests.log, bench/, bench-compiled/, bench-train/, nvidia-smi.txt). Sized to
# finish in about 10 minutes including the build. The machine's image has CUDA torch but an older transformers and no einops-free
# guarantees: carry wheels for what it lacks in .gpu-wheels/ (pip download --no-deps -d .gpu-wheels transformers
# einops safetensors) and they are installed offline first.
set -uo pipefail
OUT=${OUT:-/tmp/hybrid-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --no-deps --no-index .gpu-wheels/*.whl > "$OUT/pip.log" 2>&1
fi
export PYTHONPATH=$PWD
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 - > "$OUT/build.log" 2>&1 <<'PY'
import time, torch, transformers
t0 = time.time()
from hybrid.ops import csrc
ext = csrc.extension()
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)
print("built", ext, "cuda step:", hasattr(ext, "mamba2_step_cuda"), f"in {time.time() - t0:.0f}s")
PY
timeout 240 python3 -m pytest -q tests/gpu/test_gpu.py tests/csrc/test_csrc.py tests/csrc/test_csrc_scan.py tests/hybrid/ops/test_ops.py \
  tests/hybrid/test_vllm_plugin.py tests/hybrid/test_compiled_decode.py > "$OUT/tests.log" 2>&1  # the vLLM serving test runs only where vllm is installed
python3 tests/gpu/make_teacher.py "$OUT/teacher" > "$OUT/teacher.log" 2>&1
timeout 300 python3 -m distill.cli bench throughput --models "$OUT/teacher" "$OUT/teacher@attn=0.25" "$OUT/teacher@attn=0" \
  --batch 1 16 64 --prompt-len 256 --gen-len 256 --context 2048 8192 --context-batch 16 --decode eager graph \
  --out "$OUT/bench" \
  > "$OUT/bench.log" 2>&1
timeout 150 python3 -m distill.cli bench throughput --models "$OUT/teacher" "$OUT/teacher@attn=0.25" --batch 16 \
  --prompt-len 64 --gen-len 64 --context 2048 --no-hf --decode graph compiled --out "$OUT/bench-compiled" \
  > "$OUT/bench-compiled.log" 2>&1
timeout 150 python3 -m distill.cli bench train --model "$OUT/teacher@attn=0.5" --stage kd --batch 8 --seq-len 512 \
  --warmup 1 --steps 3 --variants fp32 bf16 bf16+chunked+teacher-bf16 --out "$OUT/bench-train" \
  > "$OUT/bench-train.log" 2>&1
rm -rf "$OUT/teacher"
tail -n 30 "$OUT/tests.log" "$OUT/bench.log" "$OUT/bench-compiled.log" "$OUT/bench-train.log"
