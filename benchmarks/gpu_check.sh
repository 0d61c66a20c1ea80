#!/usr/bin/env bash
# One-shot GPU check on one H200 (or any CUDA GPU), by section:
#   kernels  GPU tests (marked `gpu`, full bf16/fp16 grid) + kernel tests on CUDA + the three kernel
#            benchmarks; step limits add up to 460 s (under 8 minutes)
#   data     GPU tests of the data path + the loader benchmark (DALI-GPU crops/s); limits 240 s
#   trainer  GPU tests of the model/run + the training-step benchmark (MFU); limits 420 s
# Usage: benchmarks/gpu_check.sh OUT_DIR [SECTION ...]   (default: kernels data trainer, about 19 min at
# worst: with a 15-minute device lease, run `kernels` in one call and `data trainer` in another)
# JSON rows, logs and junit XML are written to OUT_DIR.
# Env: PYTHON (default: .venv/bin/python if present, else python3).
# Each step has its own time limit so a hang cannot eat the whole slot; failures are counted, the
# remaining steps still run, and the exit status is non-zero if any step failed.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [kernels] [data] [trainer]}
shift
SECTIONS=" ${*:-kernels data trainer} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FAILED=0
START=$(date +%s)

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s, t=$(($(date +%s) - START))s)"
  if ! timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1; then
    echo "!!! $name failed or timed out (see $OUT/$name.log)"
    FAILED=$((FAILED + 1))
  fi
}

{ nvidia-smi; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

if want kernels; then
# The C++ CPU ops (for the CPU tests) build in the background while the GPU-only tests run.
MAX_JOBS=8 timeout 150 "$PY" setup.py build_ext --inplace > "$OUT/build_ext.log" 2>&1 &
BUILD=$!

# Tests use one fixed config per kernel (VOXMIX_AUTOTUNE=0): compile once per head dim, not per config.
export VOXMIX_AUTOTUNE=0
step tests_gpu 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/kernels --junitxml="$OUT/tests_gpu.xml"
wait "$BUILD" || echo "!!! C++ extension build failed (see $OUT/build_ext.log); CPU-op tests will fail"
step tests_all 70 "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" tests/kernels --junitxml="$OUT/tests_all.xml"
unset VOXMIX_AUTOTUNE

# Benchmarks autotune (Hopper configs); the chosen configs are printed into the logs. Rows are
# appended as measured, so a step cut by its limit still leaves its finished rows.
export TRITON_PRINT_AUTOTUNING=1
step bench_attention 150 "$PY" benchmarks/bench_attention.py --out "$OUT/attention.jsonl"
step bench_patch_embed 50 "$PY" benchmarks/bench_patch_embed.py --out "$OUT/patch_embed.jsonl"
step bench_mae_loss 40 "$PY" benchmarks/bench_mae_loss.py --out "$OUT/mae_loss.jsonl"
unset TRITON_PRINT_AUTOTUNING
fi

# ---- data path (issue 3) ---------------------------------------------------------------------------
# DALI-GPU pipeline tests and the loader benchmark. Target: >= 5,000 crops/s of 96^3 on one H200.
if want data; then
step tests_data_gpu 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/data --junitxml="$OUT/tests_data_gpu.xml"
step bench_loader 150 "$PY" benchmarks/bench_loader.py --quick --out "$OUT/loader.jsonl"
fi

# ---- trainer (issue 5; owner: trainer engineer) -------------------------------------------------
# GPU tests of the model (bf16 kernels vs fp32 reference) and of one bf16 run of trainer/run.py, then
# the training-step benchmark: base and large MAE, kernels vs --reference vs MONAI's
# MaskedAutoEncoderViT, MFU, peak memory, data-wait fraction with the real (DALI) loader.
# Targets (base, bf16, one H200): MFU >= 40%, >= 1.3x reference, data wait < 5%, faster than MONAI.
if want trainer; then
step tests_trainer_gpu 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/trainer --junitxml="$OUT/tests_trainer_gpu.xml"
step bench_train 240 "$PY" benchmarks/bench_train.py --data --out "$OUT/train.jsonl"
fi
# ---- end trainer -----------------------------------------------------------------------------------

echo "=== done in $(($(date +%s) - START))s with $FAILED failed step(s); results in $OUT"
exit $((FAILED > 0))
