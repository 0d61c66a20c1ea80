"""The kernel backend: which implementation the custom ops run, one process-wide choice.

- "triton": the compiled Triton kernels for CUDA tensors; CPU tensors take each op's CPU
  implementation (Triton cannot compile for CPU).
- "triton-interpreter": the same Triton kernels run by Triton's interpreter, for CPU tensors (the
  kernel tests' CPU twin of the GPU path; CUDA tensors also go through the interpreter).
- "cpu": each op's CPU implementation (C++ extension / ATen: SDPA, Conv3d); CPU tensors only.

The choice is resolved once, when `voxmix.kernels` is imported: "triton-interpreter" when the kernels
were decorated for the interpreter, else "triton" with CUDA, else "cpu". After that only
`set_backend` / `use_backend` change it; the ops read it on every call together with their tensors'
device (`runs_triton`), never the environment.

Whether `triton.jit` builds interpreted or compiled kernels is decided by TRITON_INTERPRET when the
kernel modules are imported and cannot change later, so "triton-interpreter" is available only to a
process that imported `voxmix.kernels` with TRITON_INTERPRET=1, and "triton" only to one that did not
(and has CUDA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from voxmix.kernels import _ext

Backend = Literal["triton", "triton-interpreter", "cpu"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def _resolve() -> Backend:
    if _ext.interpreter():
        return "triton-interpreter"
    return "triton" if torch.cuda.is_available() else "cpu"


_backend: Backend = _resolve()


def _unavailable(name: str) -> str | None:
    """Why `name` cannot be selected in this process, or None."""
    if name == "triton-interpreter" and not _ext.interpreter():
        return (
            "the 'triton-interpreter' backend needs the Triton kernels decorated for Triton's interpreter, "
            "which happens only when TRITON_INTERPRET=1 is set before voxmix.kernels is first imported; "
            "this process imported them compiled (start Python with TRITON_INTERPRET=1)"
        )
    if name == "triton" and _ext.interpreter():
        return (
            "the 'triton' backend needs compiled Triton kernels, but this process imported voxmix.kernels "
            "with TRITON_INTERPRET=1 (interpreted kernels); use 'triton-interpreter' or 'cpu'"
        )
    if name == "triton" and not torch.cuda.is_available():
        return "the 'triton' backend needs CUDA (Triton compiles for GPUs only); use 'cpu'"
    return None


def get_backend() -> Backend:
    """The backend the ops dispatch to now."""
    return _backend


def set_backend(name: Backend) -> Backend:
    """Select the backend for every later op call in this process; returns the previous one.

    Raises ValueError for an unknown name and RuntimeError for a backend this process cannot run.
    """
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if why := _unavailable(name):
        raise RuntimeError(why)
    previous, _backend = _backend, name
    return previous


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[Backend]:
    """Run the block on `name`, then restore the previous backend (also when the block raises)."""
    global _backend
    previous = set_backend(name)
    try:
        yield name
    finally:
        _backend = previous  # assigned, not set_backend(): the previous one was valid when chosen


def runs_triton(t: torch.Tensor) -> bool:
    """True when an op on `t` runs the Triton kernels under the current backend, False for its CPU path."""
    if _backend == "triton-interpreter":
        return True
    if t.is_cuda:
        if _backend == "triton":
            return True
        raise ValueError(
            f"the {_backend!r} kernel backend runs CPU tensors only, got a tensor on {t.device}; "
            "select 'triton' (voxmix.kernels.set_backend / use_backend) for CUDA tensors"
        )
    return False
