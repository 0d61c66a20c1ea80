"""Helpers shared by the kernel tests: flash-attention's tolerance rule and the GPU marker."""

import pytest
import torch

# GPU-only tests: marked (deselect with -m "not gpu") and skipped without CUDA; each has a CPU twin.
gpu = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU twin runs instead)")

# Per-dtype floor of the tolerance rule: the rounding of one output element in that dtype.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def describe(out, ref):
    diff = (out.float() - ref.float()).abs()
    worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return f"max diff {diff.max().item():.3g}, mean diff {diff.mean().item():.3g}, worst at {worst}"


def assert_fa_close(name, out, ref_lowp, ref_fp32, dtype):
    """flash-attention's rule: |out - fp32 ref| <= 2 |PyTorch in dtype - fp32 ref| + floor(dtype)."""
    assert out.shape == ref_fp32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref_fp32.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = (out.float() - ref_fp32.float()).abs().max().item()
    base = (ref_lowp.float() - ref_fp32.float()).abs().max().item()
    bound = 2 * base + FLOOR[dtype]
    assert err <= bound, (
        f"{name} ({dtype}): error {err:.3g} > 2 x {base:.3g} + {FLOOR[dtype]:g}; " + describe(out, ref_fp32)
    )


def assert_close(name, out, ref, atol, rtol=0.0):
    ok = torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol)
    assert ok, f"{name}: not within atol={atol:g} rtol={rtol:g}; " + describe(out, ref)
