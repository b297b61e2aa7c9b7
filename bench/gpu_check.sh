#!/usr/bin/env bash
# The GPU check (issue 12): on one GPU, well within 8 minutes,
#   1. the tests that need CUDA (tests/gpu: bf16 autocast, SDPA/flash attention, Fisher memory groups, exact
#      export on bf16 weights), time-boxed;
#   2. bench/scale's 1B and 8B rows, and the loop's efficiency at 8B against the bf16 matmul peak measured in
#      the same run (bench/gpu_check.py), time-boxed, its JSON rewritten after every row.
# Writes <out>/gpu-check-<device>.json (and gpu-tests.xml); <out> defaults to bench/results.
# `--dry-run`: the same on the CPU with a tiny model, in seconds (CI runs it: tests/bench/test_gpu_check.py).
# Uses the image's python3 (or $PYTHON) and imports only core/, bench/ and tests/gpu: no venv, no make.
#
#   bash bench/gpu_check.sh [--dry-run] [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=bench/results
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
PY="${PYTHON:-python3}"
TESTS_TIMEOUT="${GPU_CHECK_TESTS_TIMEOUT:-120}"
BENCH_BUDGET="${GPU_CHECK_BENCH_BUDGET:-290}"   # rows that would start later are skipped and marked
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-330}" # hard stop; the JSON holds every row finished before it
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$OUT"
say() { echo "[$(date -u +%H:%M:%S)] gpu_check: $*"; }

say "dry_run=$DRY out=$OUT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' || true

say "1/2 tests that need CUDA (timeout ${TESTS_TIMEOUT}s)"
timeout --kill-after=10 "$TESTS_TIMEOUT" "$PY" -m pytest -q -rs -p no:cacheprovider tests/gpu \
  --junitxml="$OUT/gpu-tests.xml"
TESTS_RC=$?
say "tests rc=$TESTS_RC"

say "2/2 scale rows and loop efficiency (budget ${BENCH_BUDGET}s, timeout ${BENCH_TIMEOUT}s)"
ARGS=(--out "$OUT" --budget-seconds "$BENCH_BUDGET" --junit "$OUT/gpu-tests.xml" --tests-rc "$TESTS_RC")
if [ "$DRY" = 1 ]; then ARGS+=(--dry-run); fi
timeout --kill-after=10 "$BENCH_TIMEOUT" "$PY" -m bench.gpu_check "${ARGS[@]}"
BENCH_RC=$?
say "bench rc=$BENCH_RC"
ls -l "$OUT"/gpu-check-*.json 2>/dev/null
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
