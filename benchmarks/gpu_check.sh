#!/usr/bin/env bash
# One-shot GPU check of rnndrop's CUDA path (issue 20), for a machine with an NVIDIA GPU, torch with CUDA,
# triton >= 3.6, pytest and hypothesis, and no network: correctness on CUDA first, then every time loop of
# the CUDA path against cuDNN and a Python cell loop, in one go, within 7 minutes (Triton's JIT included).
#
#   bash benchmarks/gpu_check.sh                  # results in $OUT, else benchmarks/results/gpu_check
#   bash benchmarks/gpu_check.sh --out DIR        # results in DIR
#   bash benchmarks/gpu_check.sh --dry-run        # no GPU needed: parses, checks the scripts parse, writes every
#                                                 # file with the CUDA steps marked skipped (the tests run this)
#
# Builds and installs nothing: imports rnndrop from src/ (PYTHONPATH) with RNNDROP_BUILD_ON_FIRST_USE=0 (the
# CPU extension is not needed; CPU-only tests skip). Each step has its own time limit and is stopped with
# SIGINT, so pytest still prints its summary; a failing test does not stop the others (--maxfail, not -x).
#
# Writes 8 files: env.txt (GPU, driver, versions, precision flags), pytest.log (the CUDA tests: exactness of
# every loop incl. several programs per launch and ragged blocks, CPU-vs-CUDA masks from one seed,
# torch.compile, no host sync, cuDNN for half/bf16), bench_f32.txt/.json (float32 at IEEE precision on both
# sides: small, main, large, large-batch LSTM, main GRU; every loop, cuDNN without dropout, the LSTMCell
# loop with masks, peak memory), bench_bf16.txt/.json (autocast bf16, main and large LSTM), profile.txt
# (one training step of each loop, main LSTM), summary.txt (each step's status and seconds).
# Exit status: 0 when every step passed, 1 otherwise, 2 for a bad argument.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

dry=0
out="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out)
      [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }
      out="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
out="${out:-benchmarks/results/gpu_check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RNNDROP_BUILD_ON_FIRST_USE=0
unset TRITON_INTERPRET RNNDROP_CUDA_LOOP  # compiled kernels; each benchmark row names its loop
status=0
: >"$out/summary.txt"

# step NAME SECONDS LOG COMMAND...: run COMMAND with a time limit (SIGINT, then KILL 20 s later) into LOG.
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local start=$SECONDS rc
  if [ "$dry" = 1 ]; then
    printf 'skipped (dry run): timeout -s INT -k 20 %s %s\n' "$limit" "$*" >"$log"
    rc=0
  else
    timeout -s INT -k 20 "$limit" "$@" >"$log" 2>&1
    rc=$?
  fi
  [ "$rc" = 0 ] || status=1
  printf '%-9s rc=%s %4ss (limit %ss)%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" \
    "$([ "$dry" = 1 ] && echo ' skipped: dry run')" >>"$out/summary.txt"
  echo "== $name: rc=$rc"
  tail -n 30 "$log"
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$py" - <<'EOF' 2>&1
import sys, torch
try:
    import triton
    tv = triton.__version__
except ImportError as exc:
    tv = f"missing ({exc})"
cuda = torch.cuda.is_available()
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if cuda else None, "triton", tv,
      "gpu", torch.cuda.get_device_name(0) if cuda else None)
print("defaults: cuda.matmul.fp32_precision", getattr(torch.backends.cuda.matmul, "fp32_precision", None),
      "cudnn.rnn.fp32_precision", getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None))
import rnndrop
from rnndrop._kernels import triton_autograd
print("rnndrop", rnndrop.__version__, "loops", triton_autograd.LOOPS, "default", triton_autograd.DEFAULT_LOOP)
EOF
} >"$out/env.txt"
cat "$out/env.txt"

if [ "$dry" = 1 ]; then  # what can be checked without a GPU: the benchmark parses its arguments
  "$py" benchmarks/bench_cuda.py --help >/dev/null || { echo "gpu_check: bench_cuda.py --help failed" >&2; status=1; }
fi

# 1. Correctness on CUDA tensors (the interpreter cases skip on a GPU machine). Most telling files first:
#    if the time runs out, SIGINT still prints the summary of what ran.
step pytest 190 "$out/pytest.log" "$py" -m pytest -p no:cacheprovider -q -rfEs --maxfail=25 \
  tests/kernels/test_triton_cuda.py tests/kernels/test_counter_rng.py tests/kernels/test_triton_loops.py \
  tests/kernels/test_triton_dispatch.py tests/kernels/test_bench_cuda_smoke.py tests/kernels/test_triton_exactness.py

# 2. float32, IEEE on both sides; the profile of one training step per loop.
step bench_f32 130 "$out/bench_f32.txt" "$py" benchmarks/bench_cuda.py --precision ieee --repeats 10 --warmup 2 \
  --config small --config main --config large --config large-batch --cell LSTM \
  --json "$out/bench_f32.json" --profile "$out/profile.txt" --also-gru main

# 3. autocast bf16.
step bench_bf16 60 "$out/bench_bf16.txt" "$py" benchmarks/bench_cuda.py --amp bf16 --repeats 10 --warmup 2 \
  --config main --config large --cell LSTM --json "$out/bench_bf16.json"

for f in bench_f32.json bench_bf16.json profile.txt; do
  [ -e "$out/$f" ] || echo "not written: the step was skipped or failed before writing it" >"$out/$f"
done
echo "gpu_check: exit status $status; $(ls "$out" | wc -l) files in $out" | tee -a "$out/summary.txt"
exit $status
