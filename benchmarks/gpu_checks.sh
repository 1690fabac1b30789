#!/usr/bin/env bash
# Every GPU check and benchmark of the kernels, in one run of under 8 minutes on one H200
# (the step limits add up to 480 s).
#
#   OUT=./gpu-results PYTHON=python benchmarks/gpu_checks.sh
#
# Each step writes its output to its own file under $OUT (default ./gpu-results) and has its own
# time limit; a failing step is recorded and the next one runs. $OUT/summary.txt lists every
# step with its exit status and duration, and is printed at the end. The script exits nonzero
# if any step failed.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "${OUT:-./gpu-results}"
OUT="$(cd "${OUT:-./gpu-results}" && pwd)"  # absolute, before changing directory
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then  # the first interpreter whose torch sees a GPU
    PYTHON=python3
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
            PYTHON="$candidate"
            break
        fi
    done
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
START=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, output to $OUT/NAME.txt
step() {
    local name="$1" limit="$2"
    shift 2
    local t0=$(date +%s) rc
    echo "=== $name: $*" | tee "$OUT/$name.txt"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.txt" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" >>"$OUT/$name.txt"
    [ "$rc" -ne 0 ] && FAILED=1
    printf '%-28s rc=%-4s %4ss  %s\n' "$name" "$rc" "$dt" "$OUT/$name.txt" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.txt"
}

# 1. The machine: GPU, driver, torch and triton versions; fails if CUDA is not usable.
environment() {
    nvidia-smi
    "$PYTHON" - <<'EOF'
import importlib.util, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", __import__("triton").__version__ if importlib.util.find_spec("triton") else "NOT INSTALLED")
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE: CUDA is not available")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
}
export PYTHON
export -f environment
step 01-environment 30 bash -c environment

# 2. Kernel tests: with CUDA the Triton kernels run compiled on the GPU (not in the interpreter).
step 02-test-kernels 120 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_kernels.py

# 3. LRN forward+backward vs torch's LRN and vs the conv before it, at the paper's batch of 128.
step 03-bench-lrn-fp32 45 "$PYTHON" benchmarks/bench_lrn.py --device cuda --batch 128 --repeats 20 --warmup 5
step 04-bench-lrn-bf16-nhwc 45 "$PYTHON" benchmarks/bench_lrn.py --device cuda --batch 128 --repeats 20 --warmup 5 --amp --channels-last

# 4. Full training steps: ours vs torch's LRN vs no LRN, bf16 autocast, channels_last.
step 05-bench-step-bf16-nhwc 90 "$PYTHON" benchmarks/bench_step.py --device cuda --batch 128 --steps 30 --warmup 5 --amp --channels-last

# 5. ---------------------------------------------------------------- HOOK: data path end to end
#    benchmarks/bench_gpu_train.py (training throughput with data loading) runs here when it
#    exists, with its own defaults plus $BENCH_GPU_TRAIN_ARGS; its results also go to
#    $OUT/bench-gpu-train.json. 110 s keeps the whole script under 8 minutes.
if [ -f benchmarks/bench_gpu_train.py ]; then
    # shellcheck disable=SC2086  # BENCH_GPU_TRAIN_ARGS is a list of flags
    step 06-bench-gpu-train 150 "$PYTHON" benchmarks/bench_gpu_train.py --json "$OUT/bench-gpu-train.json" ${BENCH_GPU_TRAIN_ARGS:---images 10000 --steps 100 --batch 256}
else
    printf '%-28s %s\n' "06-bench-gpu-train" "skipped: benchmarks/bench_gpu_train.py not present" | tee -a "$SUMMARY"
fi
# ----------------------------------------------------------------------------------------------

echo
echo "=== summary ($(($(date +%s) - START)) s in all; results in $OUT)"
cat "$SUMMARY"
exit "$FAILED"
