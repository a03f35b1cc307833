#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): every GPU-only check and benchmark, each
# stage under its own time limit, logs and results under $OUT (which comes back). Run from the repo root:
#   tools/gpu-session.sh check bench-winograd bench-fp4 harness      (default: all stages, in that order)
# The machine has torch/Triton but no diffusers: carry .whl (diffusers + importlib_metadata wheels).
set -u
OUT=${OUT:-out/gpu-session}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Compiled kernels and autotuning results come back as an archive; a later call that carries .gpu-cache
# (ignored by git) skips recompiling them.
export TRITON_CACHE_DIR=/tmp/gpu-cache/triton TORCHINDUCTOR_CACHE_DIR=/tmp/gpu-cache/inductor TRITON_CACHE_AUTOTUNING=1
mkdir -p /tmp/gpu-cache && [ -f .gpu-cache/cache.tgz ] && tar -xzf .gpu-cache/cache.tgz -C /tmp/gpu-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
stages=${*:-check bench-winograd bench-fp4 harness}
limit() { echo "${LIMIT[$1]:-240}"; }
declare -A LIMIT=([check]=${T_CHECK:-240} [bench-winograd]=${T_WINO:-200} [bench-fp4]=${T_FP4:-200} [harness]=${T_HARNESS:-120})
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$OUT/summary.txt"
# Extra arguments per stage, shell-quoted (e.g. CHECK_ARGS="-k 'fp4 and not bf16'"): parsed into arrays.
eval "CHECK=(${CHECK_ARGS:-}) WINO=(${WINO_ARGS:-}) FP4=(${FP4_ARGS:-}) HARNESS=(${HARNESS_ARGS:-})"
for stage in $stages; do
  t0=$(date +%s)
  case $stage in
    # the tests run one kernel config each (TRTQ_AUTOTUNE=0: compiles, not tuning, are what they need)
    check) TRTQ_AUTOTUNE=${CHECK_AUTOTUNE:-0} timeout "$(limit check)" python3 -m pytest -v -m gpu -p no:cacheprovider -o addopts="" -rfEs \
             --timeout 150 --durations 15 "${CHECK[@]}" > "$OUT/gpu-check.log" 2>&1 ;;
    bench-winograd) timeout "$(limit bench-winograd)" python3 -m trtq.bench.winograd --out "$OUT/bench" \
             "${WINO[@]}" > "$OUT/bench-winograd.log" 2>&1 ;;
    bench-fp4) timeout "$(limit bench-fp4)" python3 -m trtq.bench.fp4 --out "$OUT/bench" \
             "${FP4[@]}" > "$OUT/bench-fp4.log" 2>&1 ;;
    harness) timeout "$(limit harness)" python3 -m pytest -v -m gpu -p no:cacheprovider -o addopts="" -rfEs \
             --timeout 120 tests/test_plugins_gpu.py "${HARNESS[@]}" > "$OUT/harness.log" 2>&1 ;;
    *) echo "unknown stage $stage"; continue ;;
  esac
  rc=$?
  echo "== $stage: exit $rc, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
done
# At most 8 files come back from $OUT: the benchmark folder travels as one archive.
tar -czf "$OUT/bench.tgz" -C "$OUT" bench && rm -rf "$OUT/bench"
[ -n "${KEEP_CACHE:-}" ] && tar -czf "$OUT/cache.tgz" -C /tmp/gpu-cache . 2>/dev/null
ls -la "$OUT"
echo "---- tails"
for f in "$OUT"/*.log; do echo "## $f"; tail -n 25 "$f"; done
