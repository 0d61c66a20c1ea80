"""Bidirectional multi-head attention for short, odd-length token sequences (3D ViT MAE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton

from kernels import _ext
from kernels._attention_bwd import (
    _attention_bwd_dkdv_kernel,
    _attention_bwd_dq_kernel,
    _attention_bwd_preprocess_kernel,
)
from kernels._attention_fwd import LOG2E, _attention_fwd_kernel

HEAD_DIMS = range(16, 129)  # any Dh in [16, 128]; tuned for 32, 64, 80, 96, 128


def _key_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) valid key lengths -> (B, 1, 1, N) bool, True where a key is padding."""
    return (torch.arange(n, device=lengths.device)[None, :] >= lengths[:, None])[:, None, None, :]


def attention_ref(q, k, v, *, scale=None, lengths=None, upcast=False):
    """Plain PyTorch attention: softmax(q k^T * scale, keys >= lengths[b] masked) v.

    upcast=True computes in fp32 (the accuracy reference); otherwise in the input dtype, which is
    "PyTorch's own low-precision error" in flash-attention's tolerance rule.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if lengths is not None:
        s = s.masked_fill(_key_mask(lengths.to(s.device), k.shape[-2]), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v).to(dtype)


# ---------------------------------------------------------------------------------------------------
# Launchers


def _check(q, k, v, lengths):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all have shape (B, H, N, Dh); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"q, k, v must share one dtype of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    b, _, n, dh = q.shape
    if n < 1:
        raise ValueError(f"attention needs N >= 1 tokens, got N={n}")
    if dh not in HEAD_DIMS:
        raise ValueError(f"head dim Dh={dh} is not supported by the Triton kernel (16 <= Dh <= 128)")
    if lengths is not None:
        if lengths.shape != (b,) or lengths.dtype.is_floating_point:
            raise ValueError(
                f"lengths must be an int tensor of shape (B,)=({b},); got {tuple(lengths.shape)} {lengths.dtype}"
            )


def _check_lengths(lengths, n):
    """Runs inside the op (eager even under torch.compile): a bad length must not read out of bounds."""
    lo, hi = int(lengths.min()), int(lengths.max())  # CPU-GPU sync (one per forward with lengths)
    if lo < 1 or hi > n:
        raise ValueError(f"lengths must lie in [1, N={n}]; got min {lo}, max {hi}")


def _meta(q):
    dh = q.shape[-1]
    return dict(
        HEAD_DIM=dh,
        BLOCK_D=max(16, triton.next_power_of_2(dh)),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _lens(lengths, b, n, device):
    # Always a lengths vector (N for every item when none is given): one compiled kernel serves padded
    # and unpadded batches, at the cost of one (B,) fill.
    if lengths is None:
        return torch.full((b,), n, device=device, dtype=torch.int32)
    return lengths.to(device=device, dtype=torch.int32).contiguous()


def _strides(q, k, v, o):
    return (*q.stride(), *k.stride(), *v.stride(), *o.stride()[:3])


def attention_fwd(q, k, v, lengths, scale):
    """Triton forward -> (o contiguous like q, lse (B, H, N) fp32 in base 2)."""
    b, h, n, _ = q.shape
    if lengths is not None:
        _check_lengths(lengths, n)
    o = q.new_empty(q.shape)
    lse = torch.empty((b, h, n), device=q.device, dtype=torch.float32)
    lens = _lens(lengths, b, n, q.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)
    _attention_fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        lens,
        scale,
        h,
        n,
        triton.next_power_of_2(n),
        *_strides(q, k, v, o),
        **_meta(q),
    )
    return o, lse


def attention_bwd(do, q, k, v, o, lse, lengths, scale):
    """Triton backward -> (dq, dk, dv), contiguous, in q's dtype."""
    b, h, n, dh = q.shape
    do = do.contiguous()
    o = o.contiguous()
    meta = _meta(q)
    delta = torch.empty_like(lse)
    block_pre = 64 if not _ext.interpreter() else 16
    _attention_bwd_preprocess_kernel[(triton.cdiv(n, block_pre), b * h)](
        o, do, delta, n, HEAD_DIM=dh, BLOCK_D=meta["BLOCK_D"], BLOCK_M=block_pre
    )
    dq, dk, dv = q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)
    lens = _lens(lengths, b, n, q.device)
    args = (scale, h, n, triton.next_power_of_2(n), *_strides(q, k, v, o))
    grid_n = lambda m: (triton.cdiv(n, m["BLOCK_N"]), b * h)
    _attention_bwd_dkdv_kernel[grid_n](q, k, v, do, lse, delta, dk, dv, lens, *args, **meta)
    grid_m = lambda m: (triton.cdiv(n, m["BLOCK_M"]), b * h)
    _attention_bwd_dq_kernel[grid_m](q, k, v, do, lse, delta, dq, lens, *args, **meta)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------
# Custom ops: one opaque node for torch.compile and DeepSpeed. CUDA (and CPU under the Triton
# interpreter) run the Triton kernels; plain CPU runs the math of the reference (see `attention`).


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or _ext.interpreter()


@torch.library.custom_op("voxmix::attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(q):
        return attention_fwd(q, k, v, lengths, scale)
    s = torch.matmul(q.float(), k.float().transpose(-2, -1)) * (scale * LOG2E)
    if lengths is not None:
        s = s.masked_fill(_key_mask(lengths, k.shape[-2]), float("-inf"))
    lse = torch.logsumexp(s * math.log(2.0), dim=-1) * LOG2E
    o = torch.matmul(torch.exp2(s - lse[..., None]), v.float()).to(q.dtype)
    return o.contiguous(), lse.contiguous()


@_attention_fwd_op.register_fake
def _(q, k, v, lengths, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("voxmix::attention_bwd", mutates_args=())
def _attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    lengths: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_triton(q):
        return attention_bwd(do, q, k, v, o, lse, lengths, scale)
    qf, kf, vf, dof = q.float(), k.float(), v.float(), do.float()
    p = torch.exp2(torch.matmul(qf, kf.transpose(-2, -1)) * (scale * LOG2E) - lse[..., None])
    if lengths is not None:
        p = p.masked_fill(_key_mask(lengths, k.shape[-2]), 0.0)
    dv = torch.matmul(p.transpose(-2, -1), dof)
    ds = p * (torch.matmul(dof, vf.transpose(-2, -1)) - (dof * o.float()).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-2, -1), qf) * scale
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, lengths, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, lengths, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, lengths)
    ctx.scale = scale


def _attention_backward(ctx, do, _dlse):
    q, k, v, o, lse, lengths = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, lengths, ctx.scale)
    return dq, dk, dv, None, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------------------
# API


def attention(q, k, v, *, scale=None, lengths=None):
    """softmax(q k^T * scale) v over (B, H, N, Dh), bidirectional; `lengths` (B,) masks padded keys.

    CUDA (or CPU with TRITON_INTERPRET=1): the Triton custom op `voxmix::attention_fwd`. Plain CPU:
    PyTorch's SDPA, whose fused CPU kernel is the fastest path there (docs/kernels.md).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not _use_triton(q):
        mask = None
        if lengths is not None:
            mask = ~_key_mask(lengths.to(q.device), k.shape[-2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    _check(q, k, v, lengths)
    return _attention_fwd_op(q, k, v, lengths, scale)[0]
