#!/usr/bin/env bash
# Every GPU check and benchmark, in one run. Each benchmark repeats its measurement 3 times and
# prints medians with their ranges. The step limits add up to 3,070 s; on 2026-11-28, with the
# benchmarks of that day (one measurement each), an H200 ran steps 01-08 in 270 s.
#
#   OUT=./gpu-results benchmarks/gpu_checks.sh
#
# Where one command may run 10 minutes, run it in two: the speed levers first
# (STEPS="01 11 12 14 04"), then the rest (STEPS="02 03 05 06 07 08 09 10 13 15 16").
#
# Each step has its own time limit; a failing or timed-out step is recorded and the next one
# runs. Everything goes to three files under $OUT (default ./gpu-results): log.txt (every
# step's full output), summary.txt (one line per step: exit status and seconds) and
# bench-gpu-train*.json (and bench-jpeg-gpu.json, learning-check.json). The script
# exits nonzero if any step failed.
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
KERNELS="all,bf16-weights"  # the step kernels of step 14; on the CPU the Triton ones run in the interpreter: too slow
[ "$DEVICE" = cpu ] && KERNELS="conv1-s2d,grouped-halves" && export TRITON_INTERPRET=1
if [ -n "${QUICK:-}" ]; then  # toy sizes, still 3 runs each
    LRN="--batch 2 --repeats 1 --warmup 1"; STEP="--batch 2 --steps 1 --warmup 1"
    TRAIN="--images 96 --classes 4 --size 72 --crop 64 --steps 1 --warmup 1 --batch 8 --workers 2"
    LOADER="--images 160 --batch-size 16 --batches 2 --train-steps 1 --workers 2"
    JPEG="--images 512 --batch 16 --steps 3 --warmup 1"
else
    LRN="--batch 128 --repeats 7 --warmup 5"; STEP="--batch 128 --steps 10 --warmup 5"
    TRAIN="--images 20000 --steps 100 --batch 256"; LOADER="--images 4096 --batches 10 --train-steps 2 --workers 8"
    JPEG=""
fi
# the end-to-end benchmarks (steps 03, 09, 14, 15) share one set of JPEGs and its store, made once
# per set of sizes and kept in $TMPDIR between runs of this script
TRAIN="$TRAIN --workdir ${TMPDIR:-/tmp}/alexnet-gpu-checks-$(echo "$TRAIN" | cksum | cut -d' ' -f1)"

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
step 02-tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider -x -rs tests/test_kernels.py tests/test_data_augment.py \
    tests/test_train_inputs.py

# 3. End-to-end training throughput: one step fed from the store (ours), from per-image Pillow
# (baseline) and from a batch already on the GPU (synthetic); goal >= 0.9 of synthetic.
# shellcheck disable=SC2086  # word lists of flags
step 03-bench-gpu-train 240 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --json "$OUT/bench-gpu-train.json" $TRAIN

# 4. Full training steps: ours vs a torch-only LRN in the same layout vs no LRN, bf16 autocast,
# channels_last; MFU against the GPU's spec bf16 dense peak and a measured bf16 matmul.
amp=""; [ "$DEVICE" = cuda ] && amp="--amp"
# shellcheck disable=SC2086
step 04-bench-step 90 "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" $STEP $amp --channels-last

# 5. LRN forward+backward vs a torch-only LRN (same layout) and vs the conv before it, batch 128.
# shellcheck disable=SC2086
step 05-bench-lrn-fp32 60 "$PYTHON" benchmarks/bench_lrn.py --device "$DEVICE" $LRN
# shellcheck disable=SC2086
step 06-bench-lrn-bf16 60 "$PYTHON" benchmarks/bench_lrn.py --device "$DEVICE" $LRN $amp --channels-last

# 6. The demo on the device: the same recipe as on the CPU, bf16; accuracy should clear 85%.
if [ -z "${QUICK:-}" ]; then
    step 07-demo 100 "$PYTHON" -c "from alexnet.cli import main; main(['demo', '--quiet', '--out', '/tmp/alexnet-demo'])"
fi

# 7. The CPU data path on this machine's cores (no GPU involved).
# shellcheck disable=SC2086
step 08-bench-loader 120 "$PYTHON" benchmarks/bench_loader.py $LOADER

# 8. End to end again with torch.compile (compilation takes a minute or more; without the
# train() reference runs, which would compile again each time).
# shellcheck disable=SC2086
step 09-bench-gpu-train-compile 240 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --compile --skip-train $TRAIN

# 9. Training from a JPEG store, and CPU decoding vs nvJPEG (when that benchmark is present).
if [ -f benchmarks/bench_jpeg_gpu.py ]; then
    # shellcheck disable=SC2086
    step 10-bench-jpeg-gpu 240 "$PYTHON" benchmarks/bench_jpeg_gpu.py --device "$DEVICE" --json "$OUT/bench-jpeg-gpu.json" $JPEG
fi

# 10. The step's speed levers (space-to-depth conv1, fused block tails, one-pass SGD, its bf16
# weights read by the forward pass, grouped convolutions three ways, CUDA graph): their tests with the Triton kernels compiled (and train()
# with --step-kernels against the standard step), then each lever alone and all together at batch
# 128 and 256, conv1, the block tails and the grouped convolutions on their own, and a per-kernel
# profile of today's step.
step 11-tests-levers 150 "$PYTHON" -m pytest -q -p no:cacheprovider -x -rs tests/test_kernels_step.py \
    tests/test_kernels_grouped.py tests/test_kernels_bf16_weights.py tests/test_train_step_kernels.py \
    tests/test_graph_step.py
step 12-bench-levers 360 "$PYTHON" benchmarks/bench_levers.py --device "$DEVICE" ${QUICK:+--quick}

# 11. Does the full-size network learn with the paper's recipe? (issue of the paper's init: the loss
# sits at ln(10)); paper vs inverted dropout, the two PCA lighting scales, on the built-in data at 256 px.
step 13-learning-check 420 "$PYTHON" benchmarks/learning_check.py --device "$DEVICE" --out /tmp/alexnet-learning \
    --json "$OUT/learning-check.json" ${QUICK:+--quick}

# 12. End to end with the levers as 'alexnet train --step-kernels all' runs them, from the store
# and synthetic; then the same with torch.compile's CUDA graphs (--compile-mode reduce-overhead).
# shellcheck disable=SC2086
step 14-bench-gpu-train-kernels 240 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --skip-train \
    --step-kernels "$KERNELS" --json "$OUT/bench-gpu-train-kernels.json" $TRAIN
# shellcheck disable=SC2086
step 15-bench-gpu-train-graphs 300 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --skip-train \
    --compile --compile-mode reduce-overhead --json "$OUT/bench-gpu-train-graphs.json" $TRAIN

# 13. End to end as 'alexnet train --step-kernels all,bf16-weights --cuda-graph' runs it: the kernels
# and the whole step replayed as one CUDA graph (captured after 3 eager steps).
if [ "$DEVICE" = cuda ]; then
    # shellcheck disable=SC2086
    step 16-bench-gpu-train-cuda-graph 240 "$PYTHON" benchmarks/bench_gpu_train.py --device "$DEVICE" --skip-train \
        --step-kernels "$KERNELS" --cuda-graph --json "$OUT/bench-gpu-train-cuda-graph.json" $TRAIN
fi

echo
echo "=== summary ($(($(date +%s) - START)) s in all; results in $OUT)" | tee -a "$LOG"
cat "$SUMMARY"
exit "$FAILED"
