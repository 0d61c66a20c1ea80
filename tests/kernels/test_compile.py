"""The compiled (non-interpreter) Triton path, checked on a machine without a GPU.

`sm90_compile.py` compiles every kernel ahead of time for Hopper (sm_90) and the fixed-config ones for
Ampere (sm_80), and reports shared memory per block. A type error that only the compiler sees, or a
tile that does not fit, fails here instead of on the first GPU run.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the GPU tests compile and run the kernels")
def test_kernels_compile_for_hopper_and_fit_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "sm90_compile.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"ahead-of-time compile failed:\n{proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"].split("[")[0] for r in rows}
    assert len(kernels) == 8, f"expected every kernel to compile, got {sorted(kernels)}"
    too_big = [r for r in rows if not r["fits"]]
    assert not too_big, f"shared memory over the device limit: {too_big}"
