#!/usr/bin/env bash
# One-shot GPU check of rnndrop's CUDA (Triton) path, for a session that has a machine with an
# NVIDIA GPU: correctness on CUDA, then the CUDA benchmark, in one go (about 5 minutes; each step has
# its own time limit so the whole stays under 8).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; results in $OUT, else benchmarks/results/gpu_check
#
# Installs nothing: it expects torch with CUDA, triton >= 3.6, pytest and hypothesis on the machine
# (the GPU machine's image has torch 2.11, triton 3.6, pytest and hypothesis) and imports rnndrop from
# src/ (PYTHONPATH), so no build and no network. The compiled CPU extension is not needed.
#
# Writes (7 files): env.txt (GPU, driver, versions), pytest.log (Triton tests on CUDA tensors),
# bench_cuda.txt/.json (float32), bench_cuda_bf16.txt/.json (autocast bf16, main and large configs),
# and profile.txt (where one training step's time goes). Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels must be compiled for the GPU, not interpreted
status=0

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$py" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__,
"gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

echo "== 1/3 Triton tests on CUDA tensors (the CPU-interpreter cases skip here; CI runs them)"
timeout 240 "$py" -m pytest -p no:cacheprovider -q -rs -x \
  tests/kernels/test_triton_exactness.py tests/kernels/test_triton_dispatch.py tests/kernels/test_bench_cuda_smoke.py \
  >"$out/pytest.log" 2>&1 || status=1
tail -n 25 "$out/pytest.log"

echo "== 2/3 benchmark, float32 (all configs, LSTM and GRU) + profile of one training step"
timeout 240 "$py" benchmarks/bench_cuda.py --json "$out/bench_cuda.json" --profile "$out/profile.txt" \
  >"$out/bench_cuda.txt" 2>&1 || status=1
cat "$out/bench_cuda.txt"

echo "== 3/3 benchmark, autocast bf16 (main and large configs, LSTM)"
timeout 90 "$py" benchmarks/bench_cuda.py --amp bf16 --config main --config large --cell LSTM --repeats 10 \
  --json "$out/bench_cuda_bf16.json" >"$out/bench_cuda_bf16.txt" 2>&1 || status=1
cat "$out/bench_cuda_bf16.txt"

echo "gpu_check: exit status $status; files in $out"
exit $status
