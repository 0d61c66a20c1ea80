#!/usr/bin/env bash
# One-shot GPU check on one H200 (or any CUDA GPU), by section:
#   kernels  GPU tests (marked `gpu`, full bf16/fp16 grid) + kernel tests on CUDA + the three kernel
#            benchmarks; step limits add up to 460 s (under 8 minutes)
#   fa4      attention against flash-attn-4 on N >= 512 (needs both halves of its wheels, see below); 150 s
#   data     GPU tests of the data path + the loader benchmark (DALI-GPU crops/s); limits 240 s
#   trainer  GPU tests of the model/run + the training-step benchmark (MFU); limits 420 s
# Usage: benchmarks/gpu_check.sh OUT_DIR [SECTION ...]   (default: kernels data trainer)
# JSON rows, logs and junit XML are written to OUT_DIR.
# Env: PYTHON (default: .venv/bin/python if present, else python3).
# Each step has its own time limit so a hang cannot eat the whole slot; failures are counted, the
# remaining steps still run, and the exit status is non-zero if any step failed.
#
# Env PACK_TO=DIR: at exit, OUT_DIR goes to DIR/gpu_check-<sections>.tgz and its *.jsonl and
# environment.txt are copied beside it (the device tool returns at most 8 files from $OUT).
#
# On the lent H200 (15 minutes of device time per session, machine start included; the image has
# Python 3.12, torch 2.11, Triton 3.6 and lacks monai, nibabel, deepspeed, DALI and flash-attn-4):
# run `benchmarks/gpu_wheels.sh --fa4` here first, then back to back (the machine is given back after
# 30 s idle, and the second call needs what the first staged):
#   1. run(carry=[".whl"],  timeout_s=540, command="PACK_TO=$OUT bash benchmarks/gpu_check.sh /tmp/gc kernels")
#   2. run(carry=[".whl2"], timeout_s=300, command="PACK_TO=$OUT bash benchmarks/gpu_check.sh /tmp/gc2 fa4")
#   then `benchmarks/gpu_report.py FILES_AT` here, copy the *.jsonl to benchmarks/results/*-h200.jsonl
#   and the table to the README. `trainer` (issue 5's targets, ~7 min) needs a session of its own: carry
#   .whl and run `... gpu_check.sh /tmp/gc trainer` in one call.
# Carried wheels are staged in /tmp/voxmix_whl (kept while the machine is warm), split wheels joined
# when both halves are there, and installed into /tmp/voxmix_site on PYTHONPATH. DALI (199 MB) cannot
# travel (64 MiB per call): the `data` section then measures the torch loader only.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [kernels] [fa4] [data] [trainer]}
shift
SECTIONS=" ${*:-kernels data trainer} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FAILED=0
START=$(date +%s)
pack() {
  [ -n "${PACK_TO:-}" ] || return 0
  local tag
  tag=$(echo $SECTIONS | tr ' ' '-')
  mkdir -p "$PACK_TO"
  tar czf "$PACK_TO/gpu_check-$tag.tgz" -C "$OUT" . && cp "$OUT"/*.jsonl "$OUT/environment.txt" "$PACK_TO"/ 2>/dev/null
  echo "packed $OUT into $PACK_TO/gpu_check-$tag.tgz"
}
trap pack EXIT
trap 'exit 143' TERM INT

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s, t=$(($(date +%s) - START))s)"
  if ! timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1; then
    echo "!!! $name failed or timed out (see $OUT/$name.log)"
    FAILED=$((FAILED + 1))
  fi
}

# ---- carried wheels (benchmarks/gpu_wheels.sh) ----------------------------------------------------
STAGE=/tmp/voxmix_whl
for d in .whl .whl2; do
  if [ -d "$d" ]; then mkdir -p "$STAGE" && cp -n "$d"/* "$STAGE"/; fi
done
if [ -d "$STAGE" ]; then
  for part in "$STAGE"/*.part00; do
    [ -e "$part" ] || continue
    whole=${part%.part00}
    if [ -e "$whole.part01" ]; then
      cat "$part" "$whole.part01" > "$whole.tmp" && mv "$whole.tmp" "$whole" && rm -f "$part" "$whole.part01"
    else
      echo "only one half of $(basename "$whole") is staged: its package is not installed this call"
    fi
  done
  # Install what an earlier call on this (warm) machine has not installed yet.
  DONE=/tmp/voxmix_site/.installed
  NEW=()
  for w in "$STAGE"/*.whl; do
    [ -e "$w" ] && ! grep -qxF "${w##*/}" "$DONE" 2>/dev/null && NEW+=("$w")
  done
  if ((${#NEW[@]})); then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/voxmix_site \
      "${NEW[@]}" > "$OUT/wheels.log" 2>&1; then
      printf '%s\n' "${NEW[@]##*/}" >> "$DONE"
    else
      echo "!!! installing carried wheels failed (see $OUT/wheels.log)"; FAILED=$((FAILED + 1))
    fi
  fi
  if [ -s "$DONE" ]; then
    # --target does not run the wheels' .pth files (cutlass DSL puts its modules on sys.path that way):
    # let `site` evaluate them once and put what they add on PYTHONPATH too.
    PTH=$("$PY" -c "import site, sys; b = list(sys.path); site.addsitedir('/tmp/voxmix_site'); print(':'.join(p for p in sys.path if p not in b))")
    export PYTHONPATH=${PTH:-/tmp/voxmix_site}${PYTHONPATH:+:$PYTHONPATH}
    echo "carried wheels installed: $(tr '\n' ' ' < "$DONE")"
  fi
fi

# Nothing is installed here: voxmix is imported from this checkout (voxmix/__init__.py then finds its
# subpackages next to it), and the C++ ops are built in place below.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

if want kernels; then
# The C++ CPU ops (for the CPU tests) build in the background while the GPU-only tests run.
MAX_JOBS=8 timeout 150 "$PY" setup.py build_ext --inplace > "$OUT/build_ext.log" 2>&1 &
BUILD=$!

# Tests use one fixed config per kernel (VOXMIX_AUTOTUNE=0): compile once per head dim, not per config.
export VOXMIX_AUTOTUNE=0
step tests_gpu 150 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests/kernels --junitxml="$OUT/tests_gpu.xml"
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

# ---- flash-attn-4 (issue 4's second attention target) ------------------------------------------------
if want fa4; then
step fa4_import 60 "$PY" -c "from flash_attn.cute import flash_attn_func; print('flash-attn-4 importable')"
export TRITON_PRINT_AUTOTUNING=1
step bench_attention_fa4 150 "$PY" benchmarks/bench_attention.py --min-n 512 --out "$OUT/attention_fa4.jsonl"
unset TRITON_PRINT_AUTOTUNING
fi

# ---- data path (issue 3) ---------------------------------------------------------------------------
# DALI-GPU pipeline tests and the loader benchmark. Target: >= 5,000 crops/s of 96^3 on one H200.
if want data; then
step tests_data_gpu 90 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests/trainer/data --junitxml="$OUT/tests_data_gpu.xml"
step bench_loader 150 "$PY" benchmarks/bench_loader.py --quick --out "$OUT/loader.jsonl"
fi

# ---- trainer (issue 5; owner: trainer engineer) -------------------------------------------------
# GPU tests of the model (bf16 kernels vs fp32 reference) and of one bf16 run of trainer/run.py, then
# the training-step benchmark: base and large MAE, kernels vs --reference vs MONAI's
# MaskedAutoEncoderViT, MFU, peak memory, data-wait fraction with the real (DALI) loader.
# Targets (base, bf16, one H200): MFU >= 40%, >= 1.3x reference, data wait < 5%, faster than MONAI.
if want trainer; then
step tests_trainer_gpu 180 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests/trainer --junitxml="$OUT/tests_trainer_gpu.xml"
step bench_train 240 "$PY" benchmarks/bench_train.py --data --out "$OUT/train.jsonl"
fi
# ---- end trainer -----------------------------------------------------------------------------------

echo "=== done in $(($(date +%s) - START))s with $FAILED failed step(s); results in $OUT"
exit $((FAILED > 0))
