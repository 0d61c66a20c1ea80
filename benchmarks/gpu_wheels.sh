#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels the lent H200's image lacks, for benchmarks/gpu_check.sh.
#
# The image (device tool's KINDS.md, 2026-11): Python 3.12, torch 2.11.0+cu130, triton 3.6.0, numpy 2.5,
# pytest, scipy, ninja, setuptools, einops, msgpack, psutil, py-cpuinfo, nvidia-ml-py; no internet. Missing
# there and needed by the `trainer` section: monai, nibabel (phantoms), deepspeed (built here: PyPI has
# only its sdist) with hjson and pydantic. Carried paths travel within a 64 MiB limit per call, so:
#   - DALI (nvidia-dali-cuda130, 199 MB) cannot travel: the `data` section measures the torch loader only.
#   - flash-attn-4 needs nvidia-cutlass-dsl-libs-cu13 (92 MB). With --fa4 that wheel is cut in two:
#     .whl/ gets the trainer wheels and part 1 (~54 MiB), .whl2/ the small flash-attn-4 wheels and part 2
#     (~52 MiB). The first `run` carries .whl, the second, right after (the machine must still be warm:
#     it stages in /tmp), carries .whl2; gpu_check.sh joins the halves and installs (see its header).
# Usage: benchmarks/gpu_wheels.sh [--fa4]   (prints the size of what each call would carry)
set -euo pipefail
cd "$(dirname "$0")/.."
FA4=0
[[ "${1:-}" == "--fa4" ]] && FA4=1
rm -rf .whl .whl2
mkdir -p .whl
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

dl() {  # cp312 manylinux wheels for the device's Python, no dependencies (named explicitly below)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$1" "${@:2}"
}

# trainer section: monai (model export, MONAI MAE baseline), nibabel (phantoms), deepspeed + its needs.
dl .whl monai==1.6.1 nibabel==5.4.2 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5
# deepspeed is an sdist on PyPI; its wheel is pure Python (ops are JIT-built), built against our torch
# without an isolated build environment (which would fetch a multi-GB torch).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl

if ((FA4)); then
  mkdir -p .whl2
  dl .whl2 flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 \
    quack-kernels==0.6.5 "apache-tvm-ffi==0.1.15.post2" torch-c-dlpack-ext==0.1.5
  # flash-attn-4 asks for the cu12 libs by default; the image's torch is cu130, so carry the cu13 ones
  # (pip install --no-deps takes whatever is there).
  tmp=$(mktemp -d)
  dl "$tmp" nvidia-cutlass-dsl-libs-cu13==4.8.1
  big=$(basename "$tmp"/*.whl)
  split -n 2 -d "$tmp/$big" "$tmp/$big.part"
  mv "$tmp/$big.part00" ".whl/$big.part00"
  mv "$tmp/$big.part01" ".whl2/$big.part01"
  rm -rf "$tmp"
fi

for d in .whl .whl2; do
  [ -d "$d" ] && echo "$d: $(du -sm "$d" | cut -f1) MiB, $(ls "$d" | wc -l) files (carry limit 64 MiB with the tree)"
done
