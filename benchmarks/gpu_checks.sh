#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one pass, from the repository root of a CUDA machine:
#
#   bash benchmarks/gpu_checks.sh [RESULTS_DIR]                                  # ~10 min at most
#   ALL=1 REFERENCE=/tmp/encodecmae_v1 bash benchmarks/gpu_checks.sh [RESULTS_DIR]  # + the older figures
#
# By default the pretraining-at-scale figures (batched cache build, the step from the cache at batch 128 with
# MFU and the paper's run projected in device-hours, compiled base, base fed by the training loader with its data
# wait per step, the loader alone with pinned workers, the plan); their time limits add up to 600 s, one call of
# a lent machine. REFERENCE (ALL=1 only): a checkout of habla-liaa/encodecmae at v.1.0.0 (see vs_reference.py). Runs with the
# installed package, or, where it is not installed (a bare GPU machine with torch, torchaudio, encodec
# and soundfile), lays this checkout out as the package in a temporary folder. Each check has a time
# limit and a failed check does not stop the others; the log goes to RESULTS_DIR/gpu_checks.log.
set -uo pipefail
results=${1:-gpu_results}
mkdir -p "$results"
log="$results/gpu_checks.log"
py=${PYTHON:-python3}
if ! "$py" -c "import encodecmae_s3prl.upstream.model" 2>/dev/null; then
    pkg=$(mktemp -d)
    "$py" encodecmae_s3prl/package_layout.py "$pkg" --copy  # this checkout as the installed package
    export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
check() {
    local limit=$1
    shift
    echo "\$ $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | grep -v "^ERROR.*gpuGetDeviceCount" | tee -a "$log"
    echo "(exit ${PIPESTATUS[0]}, $(date -u +%FT%TZ))" | tee -a "$log"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee -a "$log"
# Limits sized from the H200 run of 2026-11-26 (benchmarks/README.md): its whole check set took 135 s, and small from
# the cache at batch 64 ran 11,386 audio-s/s (0.02 s a step), so each call here is mostly start-up, model and cache
# builds and compilation, not the timed steps.
check 120 "$py" benchmarks/codec_cache_rate.py --device cuda --files 48 --seconds 60 --batch-sizes 1,32,64
# --- the step from the cache at the paper's batch, the loader alone, and the plan (issue 21 items 2-4) ---
# PEAK_TFLOPS: the GPU's dense bf16 peak for the MFU column (989 for an H200 SXM; set it for another GPU);
# --sync-check: one more forward and backward per size under torch.cuda.set_sync_debug_mode("error")
peak=${PEAK_TFLOPS:-989}
check 120 "$py" benchmarks/train_throughput.py --device cuda --from-cache --sizes small,base,large --batch 128 \
    --steps 10 --warmup 2 --peak-tflops "$peak" --sync-check
check 150 "$py" benchmarks/train_throughput.py --device cuda --from-cache --sizes base --batch 128 --steps 10 \
    --warmup 3 --compile --peak-tflops "$peak"
# base fed by the training loader (8 pinned workers over its codec cache, built on the GPU first): data wait per step
check 90 "$py" benchmarks/train_throughput.py --device cuda --from-cache --sizes base --batch 128 --steps 10 \
    --warmup 3 --loader-workers 8
check 90 "$py" benchmarks/loader_rate.py --workers 0,1,2,4,8 --batch 128 --batches 20 --pin --device cuda
check 30 "$py" benchmarks/plan.py --hours 16000 -g base --device h200
# --- the figures of the 2026-11-26 run (vs the authors' code, on-the-fly training, extraction): ALL=1 ---
if [ -n "${ALL:-}" ]; then
    check 50 "$py" benchmarks/sdpa_kernels.py --device cuda --size small --batch 8
    check 100 "$py" benchmarks/vs_reference.py --reference "$REFERENCE" --device cuda --batch 8 --repeats 10
    check 100 "$py" benchmarks/vs_reference.py --reference "$REFERENCE" --device cuda --batch 64 --repeats 10
    check 120 "$py" benchmarks/train_throughput.py --device cuda --sizes small,base,large --batch 32 --steps 10
    check 80 "$py" benchmarks/extraction_rtf.py --device cuda --sizes small,base,large --seconds 30 --batch 16
    check 50 "$py" benchmarks/extraction_rtf.py --device cuda --sizes base --seconds 30 --batch 16 --precision fp32
fi
