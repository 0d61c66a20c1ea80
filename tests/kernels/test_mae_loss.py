"""kernels.mae_loss: Triton (interpreter on CPU) and C++ against the PyTorch reference."""

import pytest
import torch

from tests.kernels.kernel_testing import assert_close, describe, gpu, requires_cuda
from voxmix.kernels import _ext
from voxmix.kernels.mae_loss import _mae_loss_op, mae_loss, mae_loss_ref


def _inputs(shape, patch, m, dtype, device, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    b, c, d, h, w = shape
    n = (d // patch[0]) * (h // patch[1]) * (w // patch[2])
    v = c * patch[0] * patch[1] * patch[2]
    # An offset (CT in Hounsfield units sits near -1000..1000) tests the variance for cancellation.
    x = (torch.randn(shape, generator=g) * 3 + offset).to(device=device, dtype=dtype)
    idx = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(b)]).to(device)
    pred = torch.randn(b, m, v, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return pred, x, idx


def _check(pred, x, idx, patch, norm_pix=True):
    """flash-attention's rule against an fp64 reference; PyTorch's own error is its fp32 reference."""
    dtype = pred.dtype
    loss, per_sample = mae_loss(pred, x, idx, patch, norm_pix=norm_pix)
    assert per_sample.dtype == torch.float32 and per_sample.shape == (pred.shape[0],)
    # One random upstream gradient on both outputs (the trainer logs per_sample, optimizes loss).
    w = torch.randn(per_sample.shape, generator=torch.Generator().manual_seed(1)).to(pred.device)
    (dpred,) = torch.autograd.grad(loss + (per_sample * w).sum(), pred)
    assert dpred.dtype == dtype
    refs = {}
    for rdt in (torch.float64, torch.float32):
        p = pred.detach().to(rdt).requires_grad_()
        rl, rps = mae_loss_ref(p, x.to(rdt) if rdt == torch.float64 else x, idx, patch, norm_pix=norm_pix)
        refs[rdt] = (rl, rps, *torch.autograd.grad(rl + (rps * w.to(rdt)).sum(), p))
    for name, got, r32, r64 in zip(
        ("loss", "per_sample", "dpred"), (loss, per_sample, dpred), refs[torch.float32], refs[torch.float64]
    ):
        # Floor: one rounding of the result in its storage dtype, relative to its magnitude, plus, for
        # dpred, fp16's subnormal spacing: dpred = 2 diff / (M V) is ~1e-6 at M V = 162 x 4096, below
        # fp16's smallest normal (6.1e-5), where the spacing s = 2^-24 is absolute. The op stores its
        # gradient in fp16 (error <= s/2), autograd scales it by the upstream 1/B + w_b and rounds
        # again (<= s/2): at most s/2 (1 + max|1/B + w_b|). Seen on the H200: 7.4e-8 against 2.8e-8.
        floor = FLOOR[got.dtype] * r64.abs().max().item()
        if name == "dpred":
            spacing = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
            floor += spacing / 2 * (1 + (1 / pred.shape[0] + w).abs().max().item())
        err = (got.double() - r64).abs().max().item()
        base = (r32.double() - r64).abs().max().item()
        assert err <= 2 * base + floor, (
            f"{name} ({dtype}): error {err:.3g} > 2 x {base:.3g} + {floor:.3g}; " + describe(got, r64)
        )


FLOOR = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


CASES = [
    # shape (B, C, D, H, W), patch, M
    ((2, 1, 8, 8, 12), (4, 4, 4), 3),
    ((2, 2, 6, 4, 10), (3, 2, 5), 5),
    ((1, 1, 16, 8, 8), (8, 8, 4), 2),  # V = 256 > the interpreter's 16-wide tile: several chunks
]


@pytest.mark.parametrize("shape,patch,m", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(shape, patch, m, dtype, device):
    _check(*_inputs(shape, patch, m, dtype, device, offset=100.0), patch)


@pytest.mark.parametrize("shape,patch,m", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpp_matches_reference(shape, patch, m, dtype, cpu_backend):
    assert _ext.ext() is not None, "kernels._C is not built"
    _check(*_inputs(shape, patch, m, dtype, "cpu", offset=-1000.0), patch)


@pytest.mark.parametrize("cpp", [True, False])
def test_without_norm_pix_and_without_grad(cpp, device, request):
    if cpp:
        request.getfixturevalue("cpu_backend")
        device = "cpu"
    pred, x, idx = _inputs((2, 1, 8, 4, 4), (2, 2, 2), 4, torch.float32, device)
    _check(pred, x, idx, (2, 2, 2), norm_pix=False)
    with torch.no_grad():
        loss, per_sample = mae_loss(pred, x, idx, 2)
    assert torch.allclose(per_sample, mae_loss_ref(pred, x, idx, 2)[1], rtol=1e-5)


def test_opcheck_and_compile(device):
    pred, x, idx = _inputs((2, 1, 4, 4, 8), (2, 2, 2), 3, torch.float32, device)
    torch.library.opcheck(_mae_loss_op, (pred, x, idx, 2, 2, 2, True, 1e-6, True))
    f = torch.compile(lambda p: mae_loss(p, x, idx, (2, 2, 2))[0] * 3, fullgraph=True)
    loss = f(pred)
    (g,) = torch.autograd.grad(loss, pred)
    p2 = pred.detach().clone().requires_grad_()
    ref = mae_loss_ref(p2, x, idx, (2, 2, 2))[0] * 3
    assert_close("loss", loss, ref, atol=0, rtol=1e-5)
    assert_close("dpred", g, torch.autograd.grad(ref, p2)[0], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cpp", [True, False])
def test_bad_indices_and_shapes(cpp, device, request):
    if cpp:
        request.getfixturevalue("cpu_backend")
        device = "cpu"
    pred, x, idx = _inputs((2, 1, 4, 4, 4), (2, 2, 2), 3, torch.float32, device)
    bad = idx.clone()
    bad[1, 2] = 8  # N = 8 patches: 8 is one past the end
    with pytest.raises((ValueError, RuntimeError), match="out of range|must lie in"):
        mae_loss(pred, x, bad, 2)
    with pytest.raises(ValueError, match="patch length V=8 but C\\*pd\\*ph\\*pw = 64"):
        mae_loss(pred, x, idx, 4)
    with pytest.raises(ValueError, match="M = 0"):
        mae_loss(pred[:, :0], x, idx[:, :0], 2)


@gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "shape,patch,m", [((8, 1, 96, 96, 96), (16, 16, 16), 162), ((2, 2, 40, 24, 56), (8, 8, 8), 40)]
)
def test_gpu_grid(shape, patch, m, dtype):
    _check(*_inputs(shape, patch, m, dtype, "cuda", offset=-500.0), patch)


def test_fallback_without_extension(cpu_backend, monkeypatch):
    monkeypatch.setattr(_ext, "ext", lambda: None)
    pred, x, idx = _inputs((2, 1, 8, 8, 12), (4, 4, 4), 3, torch.float32, "cpu", offset=10.0)
    _check(pred, x, idx, (4, 4, 4))
