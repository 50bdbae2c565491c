#!/usr/bin/env bash
# The CPU figures of benchmarks/README.md for the pretraining path in one pass (run it alone: a second torch job on
# a 2-core machine slows both several times over):
#
#   REFERENCE=/path/to/encodecmae-v.1.0.0 bash benchmarks/cpu_checks.sh [RESULTS_DIR]
#
# The codec cache build (one window at a time against batched), the loader alone per worker process, the training
# step from the cache with and without torch.compile (native ISA in bf16, then capped to AVX2 in fp32, as an
# AVX2-only machine runs it) and fed by the training loader (its data wait per step), and vs_reference.py's line. The log goes to RESULTS_DIR/cpu_checks.log.
set -uo pipefail
results=${1:-cpu_results}
mkdir -p "$results"
log="$results/cpu_checks.log"
py=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
check() {
    local limit=$1
    shift
    echo "\$ $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "(exit ${PIPESTATUS[0]}, $(date -u +%FT%TZ))" | tee -a "$log"
}
avx2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
{ date -u; grep -m1 "model name" /proc/cpuinfo; nproc
  echo "flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$py" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"; } 2>&1 | tee -a "$log"
check 300 "$py" benchmarks/codec_cache_rate.py --device cpu --files 8 --seconds 20 --batch-sizes 1,8
check 200 "$py" benchmarks/loader_rate.py --workers 0,1,2 --batch 8 --batches 30
check 300 "$py" benchmarks/train_throughput.py --from-cache --sizes small --batch 8 --steps 5 --warmup 2 --sync-check
check 400 "$py" benchmarks/train_throughput.py --from-cache --sizes small --batch 8 --steps 5 --warmup 2 --compile
check 300 "$py" benchmarks/train_throughput.py --from-cache --sizes small --batch 8 --steps 3 --warmup 1 \
    --loader-workers 1
check 300 "${avx2[@]}" "$py" benchmarks/train_throughput.py --from-cache --sizes small --batch 8 --steps 3 --warmup 1 \
    --precision fp32
check 400 "${avx2[@]}" "$py" benchmarks/train_throughput.py --from-cache --sizes small --batch 8 --steps 3 --warmup 1 \
    --precision fp32 --compile
[ -n "${REFERENCE:-}" ] && check 400 "$py" benchmarks/vs_reference.py --reference "$REFERENCE" --batch 8 --repeats 5
