"""kernels.patch_embed: Triton (interpreter on CPU) and the CPU path against Conv3d in fp32."""

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.kernel_testing import assert_fa_close, gpu, requires_cuda
from voxmix.kernels.patch_embed import (
    _patch_embed_bwd_op,
    _patch_embed_fwd_op,
    patch_embed3d,
    patch_embed3d_ref,
)


def _inputs(shape, patch, e, dtype, device, pos=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, d, h, w = shape
    k = c * patch[0] * patch[1] * patch[2]
    n = (d // patch[0]) * (h // patch[1]) * (w // patch[2])
    x = torch.randn(shape, generator=g)
    wt = torch.randn(e, k, generator=g) / k**0.5
    bias = torch.randn(e, generator=g)
    p = torch.randn(n, e, generator=g) if pos else None
    return [
        None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in (x, wt, bias, p)
    ]


def _conv_ref(x, w, b, pos, patch, dtype):
    e, c = w.shape[0], x.shape[1]
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    y = F.conv3d(x, w.view(e, c, *patch), b, stride=patch).flatten(2).transpose(1, 2)
    return y if pos is None else y + pos.to(dtype)


def _check(shape, patch, e, dtype, device, pos=True, x_grad=True):
    x, w, b, p = _inputs(shape, patch, e, dtype, device, pos)
    x.requires_grad_(x_grad)
    leaves = [t for t in (x, w, b, p) if t is not None and t.requires_grad]
    y = patch_embed3d(x, w, b, p, patch)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    refs = {}
    for ref_dtype in (torch.float32, dtype):
        # Leaves in ref_dtype: with low-precision leaves autograd would round the fp32 reference's
        # gradients to bf16 on the way out, and the rule's base |PyTorch in dtype - fp32| would read 0
        # (seen on the H200: dW of magnitude ~3 then failed by one bf16 ulp against a base of 0).
        ls = [
            t.detach().to(ref_dtype).requires_grad_(t.requires_grad) if t is not None else None
            for t in (x, w, b, p)
        ]
        r = _conv_ref(*ls, patch, ref_dtype)
        rl = [t for t in ls if t is not None and t.requires_grad]
        refs[ref_dtype] = (r, *torch.autograd.grad(r, rl, dy.to(ref_dtype)))
    names = ["tokens"] + [
        n for n, t in zip(("dx", "dW", "dbias", "dpos"), (x, w, b, p)) if t is not None and t.requires_grad
    ]
    for i, name in enumerate(names):
        got = y if i == 0 else grads[i - 1]
        assert got.dtype == dtype, name
        assert_fa_close(name, got, refs[dtype][i], refs[torch.float32][i], dtype)


CASES = [
    # shape (B, C, D, H, W), patch, E
    ((1, 1, 8, 8, 8), (4, 4, 4), 24),
    ((2, 2, 6, 4, 10), (3, 2, 5), 20),
    ((1, 1, 4, 12, 4), (2, 3, 4), 33),
]


@pytest.mark.parametrize("shape,patch,e", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_conv3d(shape, patch, e, dtype, device):
    _check(shape, patch, e, dtype, device)


def test_without_pos_and_without_x_grad(device):
    # x is data (no grad): the dx kernel must not run, and dW/dbias must still be right.
    _check((2, 1, 4, 4, 8), (2, 2, 4), 18, torch.float32, device, pos=False, x_grad=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_fast_path(dtype, cpu_backend):
    _check((2, 2, 6, 4, 10), (3, 2, 5), 20, dtype, "cpu")


def test_reference_equals_conv3d():
    x, w, b, p = (t.detach() for t in _inputs((1, 2, 4, 6, 4), (2, 3, 2), 7, torch.float64, "cpu"))
    ref = patch_embed3d_ref(x, w, b, p, (2, 3, 2))
    assert torch.allclose(ref, _conv_ref(x, w, b, p, (2, 3, 2), torch.float64))


def test_opcheck_and_compile(device):
    x, w, b, p = _inputs((1, 1, 4, 4, 6), (2, 2, 3), 16, torch.float32, device)
    torch.library.opcheck(_patch_embed_fwd_op, (x, w, b, p, 2, 2, 3))
    dy = torch.randn(1, 8, 16, device=device)
    torch.library.opcheck(_patch_embed_bwd_op, (dy, x.detach(), w.detach(), 2, 2, 3, True, True))
    f = torch.compile(lambda x, w, b, p: patch_embed3d(x, w, b, p, (2, 2, 3)).square().sum(), fullgraph=True)
    loss = f(x, w, b, p)
    gw = torch.autograd.grad(loss, w)[0]
    w2 = w.detach().clone().requires_grad_()
    ref = _conv_ref(x.detach(), w2, b.detach(), p.detach(), (2, 2, 3), torch.float32).square().sum()
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(gw, torch.autograd.grad(ref, w2)[0], rtol=1e-4, atol=1e-4)


def test_errors(device):
    x, w, b, p = _inputs((1, 1, 8, 8, 8), (4, 4, 4), 24, torch.float32, device)
    with pytest.raises(ValueError, match="H=9 is not divisible by its patch size 4"):
        patch_embed3d(torch.randn(1, 1, 8, 9, 8, device=device), w, b, None, (4, 4, 4))
    with pytest.raises(ValueError, match="weight has 64 inputs per token but C\\*pd\\*ph\\*pw"):
        patch_embed3d(x, w, b, p, (2, 4, 4))
    with pytest.raises(ValueError, match="pos must have shape \\(N, E\\)=\\(8, 24\\)"):
        patch_embed3d(x, w, b, p[:3], (4, 4, 4))
    # patch=None infers the cubic patch from the weight.
    assert torch.allclose(patch_embed3d(x, w, b, p), patch_embed3d_ref(x, w, b, p, (4, 4, 4)), atol=1e-5)


@gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,patch,e",
    [
        ((2, 1, 96, 96, 96), (16, 16, 16), 768),
        ((1, 2, 64, 48, 80), (16, 16, 16), 1024),
        ((2, 1, 24, 20, 28), (4, 5, 7), 100),
    ],
)
def test_gpu_grid(shape, patch, e, dtype):
    # cuDNN would run the fp32 reference Conv3d in TF32: the reference must be real fp32.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _check(shape, patch, e, dtype, "cuda")


def test_custom_op_plain_cpu_math(cpu_backend):
    x, w, b, p = _inputs((2, 2, 6, 4, 10), (3, 2, 5), 20, torch.float32, "cpu")
    y = torch.ops.voxmix.patch_embed3d_fwd(x, w, b, p, 3, 2, 5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b, p), dy)
    ls = [t.detach().clone().requires_grad_() for t in (x, w, b, p)]
    ref = _conv_ref(*ls, (3, 2, 5), torch.float32)
    assert torch.allclose(y, ref, atol=1e-5)
    for a, r in zip(grads, torch.autograd.grad(ref, ls, dy)):
        assert torch.allclose(a, r, atol=1e-4)
