"""3D patch embedding: tokens = linear(patchify(x)) + bias (+ pos), without an im2col tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from voxmix.kernels import _ext
from voxmix.kernels.backend import runs_triton
from voxmix.kernels.patchify import (
    _check_volume,
    _patchify_impl,
    _unpatchify_impl,
    grid_shape,
    normalize_patch,
    patchify_ref,
)


def resolve_patch(x: torch.Tensor, weight: torch.Tensor, patch) -> tuple[int, int, int]:
    """patch=None infers a cubic patch from weight (E, C*p^3); checks weight matches x and patch."""
    _check_volume(x)
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (E, C*pd*ph*pw), got {tuple(weight.shape)}")
    c, k = x.shape[1], weight.shape[1]
    if patch is None:
        p = round((k / c) ** (1.0 / 3.0))
        if c * p**3 != k:
            raise ValueError(f"cannot infer a cubic patch from weight {tuple(weight.shape)} and C={c}")
        patch = (p, p, p)
    pd, ph, pw = normalize_patch(patch)
    if c * pd * ph * pw != k:
        raise ValueError(
            f"weight has {k} inputs per token but C*pd*ph*pw = {c}*{pd}*{ph}*{pw} = {c * pd * ph * pw}"
        )
    grid_shape(x.shape, (pd, ph, pw))
    return pd, ph, pw


def patch_embed3d_ref(x, weight, bias, pos=None, patch=None, *, upcast=False):
    """Plain PyTorch: patchify(x) @ weight.T + bias (+ pos). Equals a Conv3d with stride = kernel."""
    patch = resolve_patch(x, weight, patch)
    dtype = x.dtype
    if upcast:
        x, weight = x.float(), weight.float()
        bias = None if bias is None else bias.float()
        pos = None if pos is None else pos.float()
    y = patchify_ref(x, patch) @ weight.t()
    if bias is not None:
        y = y + bias
    if pos is not None:
        y = y + pos
    return y.to(dtype)


# ---------------------------------------------------------------------------------------------------
# Triton kernels. The (tokens x C*pd*ph*pw) patch matrix is never built: each program computes the
# volume address of every (token, k) in its tile and loads straight into the matmul operand.


def _configs(kind):
    if _ext.interpreter():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1, num_stages=1)]
    if not _ext.autotune():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2)]
    # Hopper tiles: E = 768/1024 and K = C*16^3 are multiples of 128; the gathered operand is loaded
    # with cp.async, so 3-4 stages hide its irregular addresses behind the tensor-core work.
    shapes = {
        "fwd": [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 256, 32, 8, 3)],
        "dx": [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 32, 4, 4)],
        "dw": [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4)],
    }[kind]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in shapes
    ]


@triton.jit
def _patch_offsets(
    offs_m, offs_k, N, GH, GW, sxb, sxc, sxd, sxh, sxw, PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr
):
    """Volume offsets of patch-matrix entries: rows are tokens (b, raster index), columns (c, i, j, l)."""
    b = (offs_m // N).to(tl.int64)  # int64: B * C*D*H*W may pass 2^31 for large batches of big crops
    t = offs_m % N
    row = b * sxb + (t // (GH * GW)) * (PD * sxd) + ((t // GW) % GH) * (PH * sxh) + (t % GW) * (PW * sxw)
    r = offs_k % (PD * PH * PW)
    col = (offs_k // (PD * PH * PW)) * sxc + (r // (PH * PW)) * sxd + ((r // PW) % PH) * sxh + (r % PW) * sxw
    return row[:, None] + col[None, :]


@triton.autotune(configs=_configs("fwd"), key=["E", "K", "PD", "PH", "PW"])
@triton.jit
def _patch_embed_fwd_kernel(
    X, W, BIAS, POS, Y,  # pointers (Y contiguous (B*N, E); POS contiguous (N, E))
    M, E, K, N, GH, GW,  # sizes: M = B*N tokens, K = C*pd*ph*pw, (GD,) GH, GW patch grid
    sxb, sxc, sxd, sxh, sxw, swe, swk,  # strides
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,  # constexpr: k -> (c, i, j, l) by shifts/muls
    HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < E
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a_off = _patch_offsets(offs_m, offs_k, N, GH, GW, sxb, sxc, sxd, sxh, sxw, PD, PH, PW)
        a = tl.load(X + a_off, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        wt = tl.load(
            W + offs_n[None, :] * swe + offs_k[:, None] * swk,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(a, wt, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_POS:
        acc += tl.load(POS + (offs_m % N)[:, None] * E + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs_m[:, None] * E + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs("dx"), key=["E", "K", "PD", "PH", "PW"])
@triton.jit
def _patch_embed_bwd_dx_kernel(
    DY, W, DX,  # pointers (DY contiguous (B*N, E); DX contiguous like x)
    M, E, K, N, GH, GW,  # sizes
    sxb, sxc, sxd, sxh, sxw, swe, swk,  # strides (of DX, and of W)
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # dX patches (tokens x K) = dY @ W, scattered back: patches do not overlap, so plain stores.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_k = offs_k < K
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_N):
        offs_e = e0 + tl.arange(0, BLOCK_N)
        mask_e = offs_e < E
        dy = tl.load(
            DY + offs_m[:, None] * E + offs_e[None, :], mask=mask_m[:, None] & mask_e[None, :], other=0.0
        )
        w = tl.load(
            W + offs_e[:, None] * swe + offs_k[None, :] * swk,
            mask=mask_e[:, None] & mask_k[None, :],
            other=0.0,
        )
        acc = tl.dot(dy, w, acc, input_precision=DOT_PREC)
    off = _patch_offsets(offs_m, offs_k, N, GH, GW, sxb, sxc, sxd, sxh, sxw, PD, PH, PW)
    tl.store(DX + off, acc.to(DX.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])


@triton.autotune(configs=_configs("dw"), key=["E", "K", "PD", "PH", "PW"])
@triton.jit
def _patch_embed_bwd_dw_kernel(
    DY, X, DW,  # pointers (DY contiguous (B*N, E); DW contiguous (E, K))
    M, E, K, N, GH, GW,  # sizes
    sxb, sxc, sxd, sxh, sxw,  # strides of X
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # dW (E x K) = dY^T @ patches, reducing over all tokens; tiles: BLOCK_N rows of E, BLOCK_K of K.
    offs_e = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_e = offs_e < E
    mask_k = offs_k < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        dyt = tl.load(
            DY + offs_m[None, :] * E + offs_e[:, None], mask=mask_e[:, None] & mask_m[None, :], other=0.0
        )
        a_off = _patch_offsets(offs_m, offs_k, N, GH, GW, sxb, sxc, sxd, sxh, sxw, PD, PH, PW)
        a = tl.load(X + a_off, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(dyt, a, acc, input_precision=DOT_PREC)
    tl.store(
        DW + offs_e[:, None] * K + offs_k[None, :],
        acc.to(DW.dtype.element_ty),
        mask=mask_e[:, None] & mask_k[None, :],
    )


# ---------------------------------------------------------------------------------------------------
# Launchers


def _geometry(x, patch):
    b, c, d, h, w = x.shape
    pd, ph, pw = patch
    gd, gh, gw = d // pd, h // ph, w // pw
    return b * gd * gh * gw, gd * gh * gw, gh, gw, c * pd * ph * pw


def _prec(t):
    return "ieee" if t.dtype == torch.float32 else "tf32"


def patch_embed3d_fwd(x, weight, bias, pos, patch):
    """Triton forward -> tokens (B, N, E) contiguous, in x's dtype."""
    m, n, gh, gw, k = _geometry(x, patch)
    e = weight.shape[0]
    y = x.new_empty((x.shape[0], n, e))
    pos = pos.contiguous() if pos is not None else None
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(e, meta["BLOCK_N"]))
    _patch_embed_fwd_kernel[grid](
        x, weight, bias if bias is not None else y, pos if pos is not None else y, y,
        m, e, k, n, gh, gw, *x.stride(), *weight.stride(), *patch,
        HAS_BIAS=bias is not None, HAS_POS=pos is not None, DOT_PREC=_prec(x),
    )  # fmt: skip
    return y


def patch_embed3d_bwd(dy, x, weight, patch, need_dx, need_dw):
    """Triton backward -> (dx or empty, dw or empty)."""
    m, n, gh, gw, k = _geometry(x, patch)
    e = weight.shape[0]
    dy = dy.contiguous()
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    dw = weight.new_empty(weight.shape) if need_dw else weight.new_empty(0)
    if need_dx:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_K"]))
        _patch_embed_bwd_dx_kernel[grid](
            dy, weight, dx, m, e, k, n, gh, gw, *dx.stride(), *weight.stride(), *patch, DOT_PREC=_prec(x)
        )
    if need_dw:
        grid = lambda meta: (triton.cdiv(e, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]))
        _patch_embed_bwd_dw_kernel[grid](
            dy, x, dw, m, e, k, n, gh, gw, *x.stride(), *patch, DOT_PREC=_prec(x)
        )
    return dx, dw


# ---------------------------------------------------------------------------------------------------
# CPU implementation: the custom ops' kernel for tensors that do not run Triton (kernels/backend.py).
# fp32/fp64: oneDNN's strided Conv3d, measured 1.2-1.6x faster than patchify + linear (forward +
# backward, 2 cores; benchmarks/bench_patch_embed.py). fp16/bf16: C++ patchify + one matmul (oneDNN's
# low-precision Conv3d is the slower path there, up to 2.6x).


def _conv_path(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float32, torch.float64)


def patch_embed3d_cpu_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
    patch: tuple[int, int, int],
) -> torch.Tensor:
    """CPU forward -> tokens (B, N, E) contiguous, in x's dtype."""
    pd, ph, pw = patch
    if _conv_path(x):
        y = F.conv3d(x, weight.reshape(weight.shape[0], x.shape[1], pd, ph, pw), bias, stride=patch)
        y = y.flatten(2).transpose(1, 2)
    else:
        y = F.linear(_patchify_impl(x, pd, ph, pw), weight, bias)
    return (y if pos is None else y + pos).contiguous()


def patch_embed3d_cpu_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    patch: tuple[int, int, int],
    need_dx: bool,
    need_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU backward -> (dx or empty, dw or empty), contiguous: the gradients of `patch_embed3d_cpu_fwd`."""
    pd, ph, pw = patch
    (e, k), (b, c) = weight.shape, x.shape[:2]
    dx, dw = x.new_empty(0), weight.new_empty(0)
    if _conv_path(x):
        # dY as the gradient of the Conv3d output (B, E, GD, GH, GW): the view autograd would pass.
        dyc = dy.transpose(1, 2).reshape(b, e, *grid_shape(x.shape, patch))
        gx, gw, _ = torch.ops.aten.convolution_backward(
            dyc, x, weight.reshape(e, c, pd, ph, pw), None, list(patch),
            [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1, [need_dx, need_dw, False],
        )  # fmt: skip
        if need_dx:
            dx = gx.contiguous()
        if need_dw:
            dw = gw.reshape(e, k).contiguous()
        return dx, dw
    dy2 = dy.reshape(-1, e)
    if need_dx:
        dx = _unpatchify_impl((dy2 @ weight).reshape(b, -1, k), pd, ph, pw, *x.shape[1:])
    if need_dw:
        dw = dy2.t() @ _patchify_impl(x, pd, ph, pw).reshape(-1, k)
    return dx, dw


# ---------------------------------------------------------------------------------------------------
# Custom ops: the only path of `patch_embed3d`. Each call dispatches on (device, backend): the Triton
# kernels, or the CPU implementation above.


@torch.library.custom_op("voxmix::patch_embed3d_fwd", mutates_args=())
def _patch_embed_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
    pd: int,
    ph: int,
    pw: int,
) -> torch.Tensor:
    if runs_triton(x):
        return patch_embed3d_fwd(x, weight, bias, pos, (pd, ph, pw))
    return patch_embed3d_cpu_fwd(x, weight, bias, pos, (pd, ph, pw))


@_patch_embed_fwd_op.register_fake
def _(x, weight, bias, pos, pd, ph, pw):
    _, n, _, _, _ = _geometry(x, (pd, ph, pw))
    return x.new_empty((x.shape[0], n, weight.shape[0]))


@torch.library.custom_op("voxmix::patch_embed3d_bwd", mutates_args=())
def _patch_embed_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    pd: int,
    ph: int,
    pw: int,
    need_dx: bool,
    need_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if runs_triton(x):
        return patch_embed3d_bwd(dy, x, weight, (pd, ph, pw), need_dx, need_dw)
    return patch_embed3d_cpu_bwd(dy, x, weight, (pd, ph, pw), need_dx, need_dw)


@_patch_embed_bwd_op.register_fake
def _(dy, x, weight, pd, ph, pw, need_dx, need_dw):
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    return dx, (weight.new_empty(weight.shape) if need_dw else weight.new_empty(0))


def _bias_grad(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, patch) -> torch.Tensor:
    """d(bias), fp32 or wider. On the CPU Conv3d path, Conv3d's own bias gradient: a plain sum over
    (B, N) rounds differently (measured: 5e-6 apart), and CPU training runs then drift from runs made
    with autograd through F.conv3d (a demo's final runs changed visibly)."""
    if not runs_triton(x) and _conv_path(x):
        (e, _), (b, c) = weight.shape, x.shape[:2]
        dyc = dy.transpose(1, 2).reshape(b, e, *grid_shape(x.shape, patch))
        return torch.ops.aten.convolution_backward(
            dyc, x, weight.reshape(e, c, *patch), [e], list(patch),
            [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1, [False, False, True],
        )[2]  # fmt: skip
    return dy.sum(dim=(0, 1), dtype=torch.float32)


def _setup(ctx, inputs, output):
    x, weight, bias, pos, pd, ph, pw = inputs
    ctx.save_for_backward(x, weight)
    ctx.patch = (pd, ph, pw)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.pos_dtype = None if pos is None else pos.dtype


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx = dw = dbias = dpos = None
    if need_dx or need_dw:
        dx, dw = _patch_embed_bwd_op(dy, x, weight, *ctx.patch, need_dx, need_dw)
        dx, dw = (dx if need_dx else None), (dw if need_dw else None)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
        dbias = _bias_grad(dy, x, weight, ctx.patch).to(ctx.bias_dtype)
    if ctx.pos_dtype is not None and ctx.needs_input_grad[3]:
        dpos = dy.sum(dim=0, dtype=torch.float32).to(ctx.pos_dtype)
    return dx, dw, dbias, dpos, None, None, None


_patch_embed_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------------
# API


def patch_embed3d(x, weight, bias, pos=None, patch=None):
    """(B, C, D, H, W) -> (B, N, E) = patchify(x) @ weight.T + bias (+ pos), weight = Conv3d.weight.reshape(E, -1).

    Always the custom op `voxmix::patch_embed3d_fwd`: the Triton kernels (CUDA, or the interpreter),
    or on CPU Conv3d for fp32/fp64 and C++ patchify + ATen matmul for fp16/bf16 (the faster of the two
    for each, see docs/kernels.md).
    `patch=None` infers a cubic patch from the weight.
    """
    pd, ph, pw = resolve_patch(x, weight, patch)
    n = (x.shape[2] // pd) * (x.shape[3] // ph) * (x.shape[4] // pw)
    e = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (e,):
        raise ValueError(f"bias must have shape (E,)=({e},), got {tuple(bias.shape)}")
    if pos is not None and tuple(pos.shape) != (n, e):
        raise ValueError(f"pos must have shape (N, E)=({n}, {e}), got {tuple(pos.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must share a dtype, got {x.dtype} and {weight.dtype}")
    return _patch_embed_fwd_op(x, weight, bias, pos, pd, ph, pw)
