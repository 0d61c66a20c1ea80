"""kernels.patchify: the C++ CPU ops (and the CUDA/ATen path) against the reshape/permute reference."""

import pytest
import torch

from tests.kernels.kernel_testing import gpu, requires_cuda
from voxmix.kernels import _ext
from voxmix.kernels.patchify import (
    _patchify_op,
    _unpatchify_op,
    patchify,
    patchify_ref,
    unpatchify,
    unpatchify_ref,
)

SHAPES = [
    # (B, C, D, H, W), patch
    ((1, 1, 4, 4, 4), (4, 4, 4)),
    ((2, 3, 6, 4, 10), (3, 2, 5)),
    ((1, 2, 7, 5, 3), (7, 1, 3)),
    ((3, 1, 16, 8, 8), (8, 4, 2)),
]


def test_extension_is_built():
    # The install builds csrc/; a missing extension silently costs speed, so it fails here.
    assert _ext.ext() is not None, "kernels._C missing: run pip install --no-build-isolation -e .[train,dev]"


@pytest.mark.parametrize("shape,patch", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpp_patchify_roundtrip(shape, patch, dtype):
    x = torch.randn(shape).to(dtype)
    p = _ext.ext().patchify_cpu(x, *patch)
    assert torch.equal(p, patchify_ref(x, patch))
    back = _ext.ext().unpatchify_cpu(p, *patch, *shape[1:])
    assert torch.equal(back, x)
    assert torch.equal(unpatchify_ref(p, patch, shape), x)


# Outputs of at least 12 MiB take the large-volume path of csrc/patchify/patchify_cpu.cpp (kStreamBytes):
# streaming stores, a prefetch one patch ahead, unpatchify in volume order. Odd sides and patches whose
# W-runs are 16, 32 and 64 B (streamed) and 12 B (too short to stream: plain stores).
STREAM_BYTES = 12 << 20
LARGE = [
    ((1, 3, 45, 140, 176), (5, 7, 16), torch.float32),
    ((1, 2, 60, 140, 400), (3, 7, 8), torch.bfloat16),
    ((2, 1, 54, 130, 480), (6, 5, 16), torch.float16),
    ((1, 3, 45, 140, 177), (5, 7, 3), torch.float32),
]


@pytest.mark.parametrize("shape,patch,dtype", LARGE)
def test_cpp_patchify_large_volumes(shape, patch, dtype):
    x = torch.randn(shape, dtype=torch.float32).to(dtype)
    assert x.nbytes >= STREAM_BYTES  # else this test would not reach the streaming path
    p = _ext.ext().patchify_cpu(x, *patch)
    ref = patchify_ref(x, patch)
    assert torch.equal(p, ref), f"first bad index {(p != ref).nonzero()[0].tolist()}"
    back = _ext.ext().unpatchify_cpu(p, *patch, *shape[1:])
    assert torch.equal(back, x), f"first bad index {(back != x).nonzero()[0].tolist()}"


def test_cpp_patchify_large_non_contiguous():
    base = torch.randn(1, 176, 3, 45, 140)
    x = base.permute(0, 2, 3, 4, 1)  # (1, 3, 45, 140, 176), not contiguous
    assert torch.equal(_ext.ext().patchify_cpu(x, 5, 7, 16), patchify_ref(x, (5, 7, 16)))
    ref = patchify_ref(x, (5, 7, 16))
    pt = torch.empty(*ref.shape[:2], 2 * ref.shape[2])[..., ::2]  # strided patches
    pt.copy_(ref)
    assert not pt.is_contiguous()
    assert torch.equal(_ext.ext().unpatchify_cpu(pt, 5, 7, 16, 3, 45, 140, 176), x)


def test_patchify_matches_conv3d_flattening():
    # Row n of the patch matrix dotted with Conv3d.weight.reshape(E, -1) is conv3d's token n.
    x = torch.randn(2, 2, 6, 4, 10, dtype=torch.float64)
    w = torch.randn(5, 2, 3, 2, 5, dtype=torch.float64)
    conv = torch.nn.functional.conv3d(x, w, stride=(3, 2, 5)).flatten(2).transpose(1, 2)
    assert torch.allclose(patchify(x, (3, 2, 5)) @ w.reshape(5, -1).t(), conv)


def test_non_contiguous_input_and_autograd():
    base = torch.randn(2, 8, 6, 4, 3)
    x = base.permute(0, 4, 1, 2, 3).requires_grad_()  # (2, 3, 8, 6, 4), not contiguous
    x.retain_grad()
    p = patchify(x, (4, 3, 2))
    g = torch.randn_like(p)
    p.backward(g)
    assert torch.equal(p, patchify_ref(x.detach(), (4, 3, 2)))
    assert torch.equal(x.grad, unpatchify_ref(g, (4, 3, 2), x.shape))
    pu = p.detach().requires_grad_()
    u = unpatchify(pu, (4, 3, 2), (3, 8, 6, 4))
    u.backward(torch.ones_like(u) * 2)
    assert torch.equal(pu.grad, torch.full_like(pu, 2.0))


def test_shape_forms_and_errors():
    x = torch.randn(2, 3, 4, 4, 4)
    p = patchify(x, 2)
    for shape in [(4, 4, 4), (3, 4, 4, 4), (2, 3, 4, 4, 4)]:
        assert torch.equal(unpatchify(p, 2, shape), x)
    with pytest.raises(ValueError, match="W=5 is not divisible by its patch size 2"):
        patchify(torch.randn(1, 1, 4, 4, 5), 2)
    with pytest.raises(ValueError, match="implies C=3|imply C=3"):
        unpatchify(p, 2, (2, 4, 4, 4))
    with pytest.raises(ValueError, match="gives 1 patches, got N=8"):
        unpatchify(p, 2, (3, 2, 2, 2))


def test_opcheck_and_fallback(monkeypatch):
    x = torch.randn(1, 2, 4, 6, 2, requires_grad=True)
    torch.library.opcheck(_patchify_op, (x, 2, 3, 1))
    torch.library.opcheck(_unpatchify_op, (torch.randn(2, 12, 8, requires_grad=True), 2, 2, 2, 1, 4, 4, 6))
    # Without the extension the reference path gives the same result.
    monkeypatch.setattr(_ext, "ext", lambda: None)
    assert torch.equal(patchify(x, (2, 3, 1)), patchify_ref(x, (2, 3, 1)))


def test_missing_extension_warns_once(monkeypatch):
    monkeypatch.setenv("VOXMIX_NO_EXT", "1")
    monkeypatch.setattr(_ext, "_warned", False)
    _ext._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="C\\+\\+ ops .* unavailable"):
            assert _ext.ext() is None
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _ext.ext() is None  # second call: no warning
    finally:
        _ext._load.cache_clear()


@gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_patchify(dtype):
    x = torch.randn(2, 1, 96, 96, 96, device="cuda", dtype=dtype)
    p = patchify(x, 16)
    assert torch.equal(p, patchify_ref(x, 16))
    assert torch.equal(unpatchify(p, 16, x.shape), x)
