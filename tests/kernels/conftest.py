"""Kernel tests: without CUDA, the Triton kernels run on CPU tensors in Triton's interpreter.

Triton decides between interpreted and compiled kernels from TRITON_INTERPRET when `triton.jit`
decorates them, i.e. when `voxmix.kernels` is first imported; this conftest sets it for that import
only. From then on the kernel backend (voxmix.kernels.backend) selects what runs: each test here runs
on the Triton backend (the interpreter without CUDA), `cpu_backend` selects the plain-CPU paths, and
the process default is the backend the trainer would get, so that later test directories in the same
pytest process (trainer tests) keep the fast CPU paths (SDPA, Conv3d, C++).
"""

import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import voxmix.kernels  # noqa: F401  (decorates every Triton kernel in interpreter mode)
    except ImportError as e:  # e.g. kernels._ext.interpreter_problem(): a Triton/NumPy pair that cannot run
        raise pytest.UsageError(f"tests/kernels need Triton's interpreter: {e}") from e
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved

from voxmix.kernels import _ext, set_backend, use_backend  # noqa: E402

if not HAS_CUDA and not _ext.interpreter():
    raise pytest.UsageError(
        "voxmix.kernels was imported (compiled) before tests/kernels/conftest.py could enable the Triton "
        "interpreter; run `TRITON_INTERPRET=1 pytest ...` or run tests/kernels on its own"
    )
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    set_backend("cpu")  # what a process without TRITON_INTERPRET resolves to: the trainer's CPU paths

# The backend of the Triton tests: compiled on CUDA, else (or when started with TRITON_INTERPRET=1)
# the interpreter.
TRITON_BACKEND = "triton-interpreter" if _ext.interpreter() else "triton"


@pytest.fixture(autouse=True)
def _triton_backend() -> Iterator[None]:
    with use_backend(TRITON_BACKEND):
        yield


@pytest.fixture
def cpu_backend() -> Iterator[None]:
    """The plain-CPU dispatch (SDPA / Conv3d / C++ / ATen), as the trainer sees it."""
    with use_backend("cpu"):
        yield


@pytest.fixture
def device() -> str:
    """Where the Triton kernels run: CUDA when present, else CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"
