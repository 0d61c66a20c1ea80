"""Fused masked reconstruction loss with per-patch target normalization (MAE's norm_pix_loss)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from voxmix.kernels import _ext
from voxmix.kernels.backend import runs_triton
from voxmix.kernels.patchify import grid_shape, normalize_patch, patchify_ref


def _target_ref(x, mask_idx, patch, norm_pix, eps, dtype=torch.float32):
    target = patchify_ref(x.detach(), patch).to(dtype)
    target = torch.gather(target, 1, mask_idx[:, :, None].expand(-1, -1, target.shape[-1]))
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, unbiased=True, keepdim=True)
        target = (target - mean) / torch.sqrt(var + eps)
    return target


def mae_loss_ref(pred, x, mask_idx, patch, *, norm_pix=True, eps=1e-6):
    """Plain PyTorch MAE loss -> (loss, per_sample (B,)); materializes the targets.

    Computed in fp32, or in fp64 when pred or x is fp64 (the tests' exact reference).
    """
    dtype = torch.float64 if torch.float64 in (pred.dtype, x.dtype) else torch.float32
    target = _target_ref(x, mask_idx, normalize_patch(patch), norm_pix, eps, dtype)
    per_sample = ((pred.to(dtype) - target) ** 2).mean(dim=(1, 2))
    return per_sample.mean(), per_sample


# ---------------------------------------------------------------------------------------------------
# Triton kernel: one program per masked patch. Pass 1 gathers the target patch straight from the
# volume for its mean and variance; pass 2 re-gathers it (an L1/L2 hit: a patch is a few KB), reads
# the prediction once and writes the squared-error row sum and the gradient. HBM sees x, pred and
# grad once each; the normalized targets exist only in registers.


@triton.jit
def _mae_loss_fwd_kernel(
    PRED, X, IDX, ROW_LOSS, GRAD,  # pointers (PRED, GRAD contiguous (B, M, V); ROW_LOSS (B, M) fp32)
    M, V, GH, GW, eps, gscale,  # sizes; gscale = 2 / (M V), the d per_sample / d pred factor
    sxb, sxc, sxd, sxh, sxw,  # strides of X
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,  # constexpr: v -> (c, i, j, l) cheaply
    NORM_PIX: tl.constexpr, NEED_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,  # a whole 16^3 patch in one tile when it fits (<= 4096): one trip per pass
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64)
    b = r // M
    n = tl.load(IDX + r)
    base = X + b * sxb + (n // (GH * GW)) * (PD * sxd) + ((n // GW) % GH) * (PH * sxh) + (n % GW) * (PW * sxw)
    offs0 = tl.arange(0, BLOCK_V)
    mean = 0.0
    inv_std = 1.0
    if NORM_PIX:
        # Shifted sums (shift = the patch's first voxel): one pass, no cancellation for an offset.
        shift = tl.load(base).to(tl.float32)
        s1 = tl.zeros([BLOCK_V], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_V], dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + offs0
            rr = offs % (PD * PH * PW)
            off = (
                (offs // (PD * PH * PW)) * sxc
                + (rr // (PH * PW)) * sxd
                + ((rr // PW) % PH) * sxh
                + (rr % PW) * sxw
            )
            t = tl.load(base + off, mask=offs < V, other=0.0).to(tl.float32)
            t = tl.where(offs < V, t - shift, 0.0)
            s1 += t
            s2 += t * t
        sum1 = tl.sum(s1, 0)
        var = (tl.sum(s2, 0) - sum1 * sum1 / V) / (V - 1)
        mean = shift + sum1 / V
        inv_std = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + eps)
    acc = tl.zeros([BLOCK_V], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + offs0
        mask = offs < V
        rr = offs % (PD * PH * PW)
        off = (
            (offs // (PD * PH * PW)) * sxc
            + (rr // (PH * PW)) * sxd
            + ((rr // PW) % PH) * sxh
            + (rr % PW) * sxw
        )
        t = tl.load(base + off, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(PRED + r * V + offs, mask=mask, other=0.0).to(tl.float32)
        diff = tl.where(mask, p - (t - mean) * inv_std, 0.0)
        acc += diff * diff
        if NEED_GRAD:
            tl.store(GRAD + r * V + offs, (diff * gscale).to(GRAD.dtype.element_ty), mask=mask)
    tl.store(ROW_LOSS + r, tl.sum(acc, 0))


# ---------------------------------------------------------------------------------------------------
# Launcher


def _check_idx(mask_idx, n):
    lo, hi = int(mask_idx.min()), int(mask_idx.max())  # CPU-GPU sync: bad indices must not read garbage
    if lo < 0 or hi >= n:
        raise ValueError(f"mask_idx values must lie in [0, N={n}); got min {lo}, max {hi}")


def mae_loss_fwd(pred, x, mask_idx, patch, norm_pix, eps, need_grad):
    """Triton forward -> (per_sample (B,) fp32, grad of sum(per_sample) w.r.t. pred or empty)."""
    b, m, v = pred.shape
    gd, gh, gw = grid_shape(x.shape, patch)
    _check_idx(mask_idx, gd * gh * gw)
    pred = pred.contiguous()
    idx = mask_idx.contiguous()
    row_loss = torch.empty((b, m), device=x.device, dtype=torch.float32)
    grad = torch.empty_like(pred) if need_grad else pred.new_empty(0)
    block_v = 16 if _ext.interpreter() else min(4096, triton.next_power_of_2(v))
    _mae_loss_fwd_kernel[(b * m,)](
        pred, x, idx, row_loss, grad if need_grad else row_loss,
        m, v, gh, gw, eps, 2.0 / (m * v), *x.stride(), *patch,
        NORM_PIX=norm_pix, NEED_GRAD=need_grad, BLOCK_V=block_v,
        num_warps=1 if _ext.interpreter() else max(1, min(8, block_v // 256)),
    )  # fmt: skip
    # Row sums in float64, reduced in a fixed order: deterministic, and exact enough for any M.
    per_sample = (row_loss.double().sum(1) / (m * v)).float()
    return per_sample, grad


# ---------------------------------------------------------------------------------------------------
# Custom op, the only path of `mae_loss`. Each call dispatches on (device, backend) (kernels/backend.py):
# Triton, or the CPU implementation: C++ (csrc/mae_loss), else (VOXMIX_NO_EXT=1, no build) the reference.


@torch.library.custom_op("voxmix::mae_loss", mutates_args=())
def _mae_loss_op(
    pred: torch.Tensor, x: torch.Tensor, mask_idx: torch.Tensor, pd: int, ph: int, pw: int,
    norm_pix: bool, eps: float, need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    if runs_triton(x):
        return mae_loss_fwd(pred, x, mask_idx, (pd, ph, pw), norm_pix, eps, need_grad)
    mod = _ext.ext() if x.device.type == "cpu" else None
    if mod is not None:
        return mod.mae_loss_cpu(pred, x, mask_idx, pd, ph, pw, norm_pix, eps, need_grad)
    _check_idx(mask_idx, patchify_ref(x[:1, :1], (pd, ph, pw)).shape[1])
    diff = pred.float() - _target_ref(x, mask_idx, (pd, ph, pw), norm_pix, eps)
    m, v = pred.shape[1:]
    grad = (diff * (2.0 / (m * v))).to(pred.dtype) if need_grad else pred.new_empty(0)
    return (diff * diff).double().sum((1, 2)).div(m * v).float(), grad


@_mae_loss_op.register_fake
def _(pred, x, mask_idx, pd, ph, pw, norm_pix, eps, need_grad):
    grad = pred.new_empty(pred.shape) if need_grad else pred.new_empty(0)
    return pred.new_empty((pred.shape[0],), dtype=torch.float32), grad


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, d_per_sample, _d_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError("mae_loss: backward through a call made without grad (pred did not require grad)")
    dpred = grad * d_per_sample.to(grad.dtype)[:, None, None]
    return dpred, None, None, None, None, None, None, None, None


_mae_loss_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------------
# API


def mae_loss(pred, x, mask_idx, patch, *, norm_pix=True, eps=1e-6):
    """(loss, per_sample (B,) fp32) for predictions pred (B, M, V) of the masked patches of x.

    The gradient for pred is computed in the same pass (stored, then scaled by the upstream gradient
    in backward); targets are never materialized. Not differentiable in x. Always the custom op
    `voxmix::mae_loss` (Triton, or on CPU the C++ kernel; see kernels/backend.py).
    """
    pd, ph, pw = normalize_patch(patch)
    if pred.dim() != 3 or x.dim() != 5 or mask_idx.dim() != 2:
        raise ValueError(
            f"expected pred (B, M, V), x (B, C, D, H, W), mask_idx (B, M); got {tuple(pred.shape)}, "
            f"{tuple(x.shape)}, {tuple(mask_idx.shape)}"
        )
    gd, gh, gw = grid_shape(x.shape, (pd, ph, pw))
    b, m, v = pred.shape
    if x.shape[0] != b or tuple(mask_idx.shape) != (b, m):
        raise ValueError(
            f"pred {tuple(pred.shape)}, x {tuple(x.shape)} and mask_idx {tuple(mask_idx.shape)} disagree on B or M"
        )
    if v != x.shape[1] * pd * ph * pw:
        raise ValueError(f"pred has patch length V={v} but C*pd*ph*pw = {x.shape[1] * pd * ph * pw}")
    if m == 0:
        raise ValueError("mask_idx selects no patches (M = 0): the loss would be a mean over nothing")
    if norm_pix and v < 2:
        raise ValueError(f"norm_pix needs patches of at least 2 voxels (unbiased variance), got V={v}")
    if mask_idx.dtype != torch.int64:
        raise ValueError(f"mask_idx must be int64, got {mask_idx.dtype}")
    need_grad = pred.requires_grad and torch.is_grad_enabled()
    per_sample, _ = _mae_loss_op(
        pred, x.detach(), mask_idx, pd, ph, pw, bool(norm_pix), float(eps), need_grad
    )
    return per_sample.mean(), per_sample
