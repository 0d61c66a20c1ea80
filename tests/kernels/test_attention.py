"""kernels.attention: Triton forward/backward (interpreter on CPU) against the PyTorch reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.kernel_testing import FLOOR, assert_close, assert_fa_close, gpu, requires_cuda
from voxmix.kernels.attention import _attention_bwd_op, _attention_fwd_op, attention, attention_ref
from voxmix.kernels.backend import runs_triton


def _inputs(b, h, n, dh, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(b, h, n, dh, generator=g).to(device=device, dtype=dtype) for _ in range(3)]
    return [t.requires_grad_() for t in qkv]


def _check_against_ref(q, k, v, lengths=None, scale=None):
    """Output and dq, dk, dv with one random upstream gradient vs fp32 and same-dtype references."""
    dtype = q.dtype
    out = attention(q, k, v, lengths=lengths, scale=scale)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    refs = {}
    for upcast in (True, False):
        qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = attention_ref(qr, kr, vr, lengths=lengths, scale=scale, upcast=upcast)
        refs[upcast] = (o, *torch.autograd.grad(o, (qr, kr, vr), do.to(o.dtype)))
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        got = out if i == 0 else grads[i - 1]
        assert got.dtype == dtype
        assert_fa_close(name, got, refs[False][i], refs[True][i], dtype)
    return out, grads


# Shapes that hurt: N = 1, primes, just above a tile (17 > 16), non-power-of-two head dims.
CASES = [
    (1, 1, 1, 32, torch.float32),
    (2, 1, 17, 64, torch.float16),
    (1, 2, 55, 32, torch.float32),
    (1, 1, 70, 80, torch.float16),
    (1, 1, 33, 96, torch.float32),
    (1, 1, 17, 128, torch.float16),
    (1, 1, 113, 64, torch.float32),
    (1, 1, 217, 32, torch.float16),
    # 257 = 2 x 128 + 1: several key tiles and a one-key tail. On CPU the Triton interpreter runs the tile
    # loops in Python (cost ~ N^2: 513 took 17 s); the CUDA test below covers 513 and 1728.
    (1, 1, 257, 64, torch.float32),
]


@pytest.mark.parametrize("b,h,n,dh,dtype", CASES)
def test_triton_matches_reference(b, h, n, dh, dtype, device):
    _check_against_ref(*_inputs(b, h, n, dh, dtype, device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_key_lengths_mask_padding(dtype, device):
    q, k, v = _inputs(3, 2, 23, 32, dtype, device, seed=1)
    lengths = torch.tensor([23, 1, 9], device=device)
    out, (dq, dk, dv) = _check_against_ref(q, k, v, lengths=lengths, scale=0.3)
    # Padded keys get no gradient, and item 2 equals attention over its 9 valid keys only.
    assert dk[1, :, 1:].abs().max() == 0 and dv[2, :, 9:].abs().max() == 0
    short = attention_ref(q[2:3], k[2:3, :, :9], v[2:3, :, :9], scale=0.3, upcast=True)
    assert_close("item with 9 keys", out[2:3], short, atol=50 * FLOOR[dtype])


def test_strided_views_of_fused_qkv(device):
    # The trainer slices q, k, v out of one projection: (B, N, 3, H, Dh) permuted, not contiguous.
    b, n, h, dh = 2, 19, 2, 32
    qkv = torch.randn(b, n, 3, h, dh, device=device, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = attention(q, k, v)
    do = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, qkv, do)
    qkv2 = qkv.detach().clone().requires_grad_()
    ref = attention_ref(*qkv2.permute(2, 0, 3, 1, 4).unbind(0), upcast=True)
    (g2,) = torch.autograd.grad(ref, qkv2, do)
    assert_close("out", out, ref, atol=1e-5)
    assert_close("dqkv", g, g2, atol=1e-5)


def test_matches_sdpa(device):
    q, k, v = _inputs(1, 2, 40, 64, torch.float32, device, seed=2)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert_close("vs SDPA", attention(q, k, v), ref, atol=2e-6)


def opcheck_attention(q, k, v, lengths, scale):
    """opcheck of both custom ops (schema, fake kernel, autograd registration: what torch.compile relies
    on), the backward at the forward's own outputs and backend."""
    torch.library.opcheck(_attention_fwd_op, (q, k, v, lengths, scale))
    o, lse = _attention_fwd_op(q, k, v, lengths, scale)
    detached = [t.detach() for t in (q, k, v, o, lse)]
    torch.library.opcheck(_attention_bwd_op, (torch.randn_like(o), *detached, lengths, scale, runs_triton(q)))


def test_custom_op_registration(device):
    q, k, v = _inputs(1, 1, 17, 32, torch.float32, device, seed=3)
    opcheck_attention(q, k, v, torch.tensor([5], device=device), 0.25)


def test_torch_compile_fullgraph(device):
    q, k, v = _inputs(2, 1, 21, 32, torch.float32, device, seed=4)
    lengths = torch.tensor([21, 7], device=device)

    def f(q, k, v):
        return (attention(q * 2, k, v, lengths=lengths) ** 2).sum()

    loss = torch.compile(f, fullgraph=True)(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = (attention_ref(qr * 2, kr, vr, lengths=lengths) ** 2).sum()
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr))
    assert_close("loss", loss, ref, atol=1e-4, rtol=1e-5)
    for name, a, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, a, r, atol=1e-4)


@pytest.mark.parametrize("lengths", [None, [12, 3]])
def test_cpu_fast_path_is_sdpa(lengths, cpu_backend):
    q, k, v = _inputs(2, 2, 12, 32, torch.float32, "cpu", seed=5)
    lens = None if lengths is None else torch.tensor(lengths)
    _check_against_ref(q, k, v, lengths=lens)


@pytest.mark.parametrize(
    "shapes,dh,lengths,match",
    [
        (((1, 1, 4, 32), (1, 1, 5, 32)), 32, None, "must all have shape"),
        (((1, 1, 4, 8),) * 2, 8, None, "head dim"),
        (((2, 1, 4, 32),) * 2, 32, [0, 4], "lengths must lie"),
        (((2, 1, 4, 32),) * 2, 32, [4, 5], "lengths must lie"),
    ],
)
def test_bad_input_errors(shapes, dh, lengths, match, device):
    q = torch.randn(shapes[0], device=device)
    k = torch.randn(shapes[1], device=device)
    lens = None if lengths is None else torch.tensor(lengths, device=device)
    with pytest.raises(ValueError, match=match):
        attention(q, k, k, lengths=lens)


# ---- GPU: the full grid in bf16/fp16 (flash-attention's rule) ------------------------------------


@gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 55, 56, 113, 216, 217, 513, 1728])
@pytest.mark.parametrize("dh", [32, 64, 80, 96, 128])
def test_gpu_grid(dtype, n, dh):
    b, h = 2, 3
    q, k, v = _inputs(b, h, n, dh, dtype, "cuda", seed=n + dh)
    lengths = torch.tensor([n, max(1, n // 2)], device="cuda")
    _check_against_ref(q, k, v)
    _check_against_ref(q, k, v, lengths=lengths, scale=1 / math.sqrt(dh) * 0.7)


def test_custom_op_plain_cpu_math(cpu_backend):
    # The op itself also runs on plain CPU (math path), e.g. when called through torch.ops directly.
    q, k, v = _inputs(2, 1, 13, 32, torch.float32, "cpu", seed=6)
    lengths = torch.tensor([13, 5])
    o, _ = torch.ops.voxmix.attention_fwd(q, k, v, lengths, 0.2)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = attention_ref(qr, kr, vr, scale=0.2, lengths=lengths)
    assert_close("out", o, ref, atol=1e-5)
    for name, a, r in zip(("dq", "dk", "dv"), grads, torch.autograd.grad(ref, (qr, kr, vr), do)):
        assert_close(name, a, r, atol=1e-5)
