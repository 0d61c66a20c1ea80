"""Kernel tests: without CUDA, the Triton kernels run on CPU tensors in Triton's interpreter.

TRITON_INTERPRET must be set before `triton.jit` decorates the kernels, i.e. before the kernel
modules are first imported; this conftest does that, then restores the variable so that other test
directories in the same pytest process (trainer tests) keep the fast CPU paths (SDPA, C++). The
autouse fixture below turns the interpreter dispatch back on for each test here.
"""

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    if "kernels._attention_fwd" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise pytest.UsageError(
            "kernels was imported before tests/kernels/conftest.py could enable the Triton interpreter; "
            "run `TRITON_INTERPRET=1 pytest ...` or run tests/kernels on its own"
        )
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import kernels  # noqa: F401,E402  (decorates every Triton kernel in interpreter mode)
    except ImportError as e:  # e.g. kernels._ext.interpreter_problem(): a Triton/NumPy pair that cannot run
        raise pytest.UsageError(f"tests/kernels need Triton's interpreter: {e}") from e

    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def no_interpreter(monkeypatch):
    """The plain-CPU dispatch (SDPA / C++ / ATen), as the trainer sees it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def device():
    """Where the Triton kernels run: CUDA when present, else CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"
