"""Loads the C++ extension (voxmix.kernels._C, built from csrc/ by setup.py).

When it is missing or fails to load, `ext()` returns None and warns once; callers then use their
PyTorch fallback. VOXMIX_NO_EXT=1 forces the fallback (used by tests of the fallback path).
"""

from __future__ import annotations

import functools
import os
import warnings


@functools.cache
def _load():
    if os.environ.get("VOXMIX_NO_EXT") == "1":
        return None, "VOXMIX_NO_EXT=1"
    try:
        from voxmix.kernels import _C
    except ImportError as err:
        return None, str(err)
    return _C, None


_warned = False


def ext():
    """The compiled module, or None (with a one-time warning) when it is not available."""
    global _warned
    mod, why = _load()
    if mod is None and not _warned:
        _warned = True
        warnings.warn(
            f"voxmix: C++ ops (voxmix.kernels._C) unavailable ({why}); using slower PyTorch fallbacks. "
            'Rebuild with `.venv/bin/python -m pip install --no-build-isolation -e ".[train,dev]"`.',
            RuntimeWarning,
            stacklevel=3,
        )
    return mod


# Read once: `voxmix.kernels` imports this module and then every kernel module in one go, so this is what
# `triton.jit` saw when it decorated the kernels (interpreted or compiled); that cannot change later.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def interpreter() -> bool:
    """True when this process decorated the Triton kernels for Triton's interpreter (fixed at import).

    Selects interpreter-sized tiles; which backend the ops run is `voxmix.kernels.backend`'s choice.
    """
    return _INTERPRETED


@functools.cache
def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run our kernels in this environment, or None (interpreter mode only).

    Measured: Triton 3.6's interpreter calls int() on the 1-element array of a loaded scalar used as a
    loop bound, which NumPy >= 2.4 refuses; Triton 3.9 squeezes first. Compiled (GPU) kernels are not
    affected, so only the CPU tests that run the kernels in the interpreter need this check.
    """
    import numpy
    import torch
    import triton

    from voxmix.kernels._interpreter_probe import loop_over_loaded_bound

    try:
        loop_over_loaded_bound[(1,)](torch.tensor([2, 0], dtype=torch.int32))
    except Exception as e:  # noqa: BLE001  (returned as the reason, with the cause)
        return (
            f"the Triton {triton.__version__} interpreter cannot run a loop bounded by a loaded value with "
            f"NumPy {numpy.__version__} ({e!r}); install numpy<2.4 or triton>=3.9 to run the kernels on CPU "
            "in interpreter mode"
        )
    return None


def autotune() -> bool:
    """False when VOXMIX_AUTOTUNE=0: one safe config per kernel (GPU tests: compile once, not per config)."""
    return os.environ.get("VOXMIX_AUTOTUNE", "1") != "0"
