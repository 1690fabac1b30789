#!/usr/bin/env bash
# Every GPU check and benchmark, in one run of under 10 minutes on one H200, most important first
# (the step limits add up to 950 s; on an H200 the whole run took 270 s without step 09).
#
#   OUT=./gpu-results benchmarks/gpu_checks.sh
#
# Each step has its own time limit; a failing or timed-out step is recorded and the next one
# runs. Everything goes to three files under $OUT (default ./gpu-results): log.txt (every
# step's full output), summary.txt (one line per step: exit status and seconds) and
# bench-gpu-train.json. The script exits nonzero if any step failed.
#
# DEVICE=cpu QUICK=1 runs the same steps on the CPU at toy sizes, to check the script itself;
# STEPS="03 09" runs only the steps whose names start with those numbers.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "${OUT:-./gpu-results}"
OUT="$(cd "${OUT:-./gpu-results}" && pwd)"  # absolute, before changing directory
cd "$ROOT"
DEVICE="${DEVICE:-cuda}"
if [ -z "${PYTHON:-}" ]; then  # the first interpreter that has torch (and, for cuda, sees a GPU)
    PYTHON=python3
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c "import sys, torch; sys.exit('$DEVICE' == 'cuda' and not torch.cuda.is_available())" >/dev/null 2>&1; then
            PYTHON="$candidate"
            break
        fi
    done
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
FAILED=0
START=$(date +%s)
if [ -n "${QUICK:-}" ]; then  # toy sizes
    LRN="--batch 4 --repeats 2 --warmup 1"; STEP="--batch 4 --steps 2 --warmup 1"
    TRAIN="--images 256 --classes 4 --steps 3 --batch 16 --workers 2"; LOADER="--images 256 --batches 2 --rounds 1 --train-steps 1 --workers 2"
else
    LRN="--batch 128 --repeats 20 --warmup 5"; STEP="--batch 128 --steps 30 --warmup 5"
    TRAIN="--images 20000 --steps 100 --batch 256"; LOADER="--images 4096 --batches 10 --rounds 2 --train-steps 2 --workers 8"
fi

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, output appended to log.txt
step() {
    local name="$1" limit="$2"
    shift 2
    local t0 rc dt
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" ${name%%-*} "* ]]; then
        return 0
    fi
    t0=$(date +%s)
    echo "=== $name: $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 20
    rc=${PIPESTATUS[0]}
    dt=$(($(date +%s) - t0))
    [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" | tee -a "$LOG"
    [ "$rc" -ne 0 ] && FAILED=1
    printf '%-26s rc=%-4s %4ss\n' "$name" "$rc" "$dt" | tee -a "$SUMMARY"
}

# 1. The machine: GPU, driver, torch and triton versions; fails if the device is not usable.
environment() {
    nvidia-smi || true
    "$PYTHON" - "$DEVICE" <<'EOF'
import importlib.util, shutil, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("triton", __import__("triton").__version__ if importlib.util.find_spec("triton") else "NOT INSTALLED")
print("C compiler", shutil.which("cc") or shutil.which("gcc") or "NONE")
if sys.argv[1] == "cuda":
    print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE: CUDA is not available")
    sys.exit(0 if torch.cuda.is_available() else 1)
EOF
}
export PYTHON DEVICE
export -f environment
step 01-environment 60 bash -c environment

# 2. Kernel and augmentation tests: with CUDA the Triton kernels run compiled on the GPU.
step 02-tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider -x -rs tests/test_kernels.py tests/test_data_augment.py

# 3. End-to-end training throughput, data included (goal: >= 20,000 images/s at >= 0.9 efficiency).
# shellcheck disable=SC2086  # word lists of flags
step 03-bench-gpu-train 170 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --json "$OUT/bench-gpu-train.json" $TRAIN

# 4. Full training steps: ours vs torch's LRN vs no LRN, bf16 autocast, channels_last.
amp=""; [ "$DEVICE" = cuda ] && amp="--amp"
# shellcheck disable=SC2086
step 04-bench-step 70 "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" $STEP $amp --channels-last

# 5. LRN forward+backward vs torch's LRN and vs the conv before it, at the paper's batch of 128.
# shellcheck disable=SC2086
step 05-bench-lrn-fp32 40 "$PYTHON" benchmarks/bench_lrn.py --device "$DEVICE" $LRN
# shellcheck disable=SC2086
step 06-bench-lrn-bf16 40 "$PYTHON" benchmarks/bench_lrn.py --device "$DEVICE" $LRN $amp --channels-last

# 6. The demo on the device: the same recipe as on the CPU, bf16; accuracy should clear 85%.
if [ -z "${QUICK:-}" ]; then
    step 07-demo 100 "$PYTHON" -c "from alexnet.cli import main; main(['demo', '--quiet', '--out', '/tmp/alexnet-demo'])"
fi

# 7. The CPU data path on this machine's cores (no GPU involved).
# shellcheck disable=SC2086
step 08-bench-loader 80 "$PYTHON" benchmarks/bench_loader.py $LOADER

# 8. End to end again with torch.compile (compilation takes a minute or more).
# shellcheck disable=SC2086
step 09-bench-gpu-train-compile 240 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --compile $TRAIN

echo
echo "=== summary ($(($(date +%s) - START)) s in all; results in $OUT)" | tee -a "$LOG"
cat "$SUMMARY"
exit "$FAILED"
