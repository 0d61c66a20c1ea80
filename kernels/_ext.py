"""Loads the C++ extension (kernels._C, built from csrc/ by setup.py).

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
        from kernels import _C
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
            f"voxmix: C++ ops (kernels._C) unavailable ({why}); using slower PyTorch fallbacks. "
            'Rebuild with `.venv/bin/python -m pip install --no-build-isolation -e ".[train,dev]"`.',
            RuntimeWarning,
            stacklevel=3,
        )
    return mod


def interpreter() -> bool:
    """True when Triton runs in interpreter mode (CPU tensors; read when kernel modules are imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune() -> bool:
    """False when VOXMIX_AUTOTUNE=0: one safe config per kernel (GPU tests: compile once, not per config)."""
    return os.environ.get("VOXMIX_AUTOTUNE", "1") != "0"
