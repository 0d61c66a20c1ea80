"""Bidirectional multi-head attention for short, odd-length token sequences (3D ViT MAE)."""

from __future__ import annotations

import math

import torch
import triton

from voxmix.kernels import _ext
from voxmix.kernels._attention_bwd import (
    _attention_bwd_dkdv_kernel,
    _attention_bwd_dq_kernel,
    _attention_bwd_preprocess_kernel,
)
from voxmix.kernels._attention_fwd import _attention_fwd_kernel
from voxmix.kernels.backend import runs_triton

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


def _check(q, k, v, lengths, triton: bool) -> None:
    """Checks of the public API; `triton`: the call runs the Triton kernels (which limit dtype and Dh)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all have shape (B, H, N, Dh); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    dtypes = (torch.float16, torch.bfloat16, torch.float32) + (() if triton else (torch.float64,))
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"q, k, v must share one dtype of {names}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    b, _, n, dh = q.shape
    if n < 1:
        raise ValueError(f"attention needs N >= 1 tokens, got N={n}")
    if triton and dh not in HEAD_DIMS:
        raise ValueError(f"head dim Dh={dh} is not supported by the Triton kernel (16 <= Dh <= 128)")
    if lengths is not None:
        if lengths.shape != (b,) or lengths.dtype.is_floating_point:
            raise ValueError(
                f"lengths must be an int tensor of shape (B,)=({b},); got {tuple(lengths.shape)} {lengths.dtype}"
            )


def _check_lengths(lengths, n):
    """Runs inside the op (eager even under torch.compile): a bad length must not read out of bounds."""
    lo, hi = torch.stack(torch.aminmax(lengths)).tolist()  # CPU-GPU sync (one per forward with lengths)
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
    lse = lse.contiguous()  # the CPU path's LSE (a forward on another backend) is a transposed view
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
# CPU implementation: ATen's fused flash-attention kernels, the ones F.scaled_dot_product_attention
# picks on CPU (faster there than the eager math, docs/kernels.md), called directly to get the
# log-sum-exp for the custom op's backward. The LSE is each backend's own (base 2 from Triton, natural
# log from ATen: converting it would round it, and CPU gradients would no longer be SDPA's to the bit),
# so a backward always runs on the backend of its forward (recorded at the forward). Outputs keep ATen's CPU layouts (o like q, the
# LSE and the gradients (B, N, H, .) in memory): a copy to contiguous measured up to 1.5x slower
# forward + backward, and the model's o.transpose(1, 2).reshape is free on that layout.


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32  # fp64: CPU path only


def _cpu_mask(lengths: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    # Additive, in q's dtype: the CPU flash kernel takes no bool mask (SDPA converts the same way).
    if lengths is None:
        return None
    pad = _key_mask(lengths.to(q.device), q.shape[-2])
    return torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill(pad, float("-inf"))


def attention_cpu_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU forward -> (o, lse (B, H, N), natural log: fp32, or fp64 for fp64 inputs), in `_cpu_layouts`."""
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=_cpu_mask(lengths, q), scale=scale
    )
    return o, lse


def attention_cpu_bwd(do, q, k, v, o, lse, lengths, scale):
    """CPU backward -> (dq, dk, dv) in q's dtype, in `_cpu_grad`'s layout (arguments as the op's)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        do, q, k, v, o, lse, 0.0, False, attn_mask=_cpu_mask(lengths, q), scale=scale
    )


def _cpu_layouts(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (o, lse) as ATen's CPU kernel lays them out (its meta function): one layout per device."""
    b, h, n, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, n, h), dtype=_lse_dtype(q)).transpose(1, 2)


def _cpu_grad(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_permuted(t.shape, (0, 2, 1, 3), dtype=t.dtype, device=t.device)


# ---------------------------------------------------------------------------------------------------
# Custom ops: one opaque node for torch.compile and DeepSpeed, and the only path of `attention`. Each
# call dispatches on (device, backend) (kernels/backend.py): Triton kernels, or the CPU implementation.


@torch.library.custom_op("voxmix::attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if lengths is not None:
        _check_lengths(lengths, q.shape[2])
    if not runs_triton(q):
        return attention_cpu_fwd(q, k, v, lengths, scale)
    o, lse = attention_fwd(q, k, v, lengths, scale)
    if q.is_cuda:
        return o, lse
    o_cpu, lse_cpu = _cpu_layouts(q)  # the interpreter on CPU tensors: the CPU path's layouts
    return o_cpu.copy_(o), lse_cpu.copy_(lse)


@_attention_fwd_op.register_fake
def _(q, k, v, lengths, scale):
    if q.is_cuda:
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)
    return _cpu_layouts(q)


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
    triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # `triton`: the forward's backend, whose LSE this is (not the backend at backward time).
    if not triton:
        return attention_cpu_bwd(do, q, k, v, o, lse, lengths, scale)
    grads = attention_bwd(do, q, k, v, o, lse, lengths, scale)
    if q.is_cuda:
        return grads
    dq, dk, dv = (_cpu_grad(g).copy_(g) for g in grads)  # the interpreter: the CPU path's layout
    return dq, dk, dv


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, lengths, scale, triton):
    if q.is_cuda:
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)
    return _cpu_grad(q), _cpu_grad(k), _cpu_grad(v)


def _attention_setup(ctx, inputs, output):
    q, k, v, lengths, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, lengths)
    ctx.scale = scale
    ctx.triton = runs_triton(q)  # setup runs right after the forward, on its backend


def _attention_backward(ctx, do, _dlse):
    q, k, v, o, lse, lengths = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, lengths, ctx.scale, ctx.triton)
    return dq, dk, dv, None, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------------------
# API


def attention(q, k, v, *, scale=None, lengths=None):
    """softmax(q k^T * scale) v over (B, H, N, Dh), bidirectional; `lengths` (B,) masks padded keys.

    Always the custom op `voxmix::attention_fwd`, which runs the Triton kernels (CUDA, or the
    interpreter) or, on CPU, ATen's fused flash-attention kernel (what SDPA runs on CPU); see
    kernels/backend.py and docs/kernels.md.
    """
    _check(q, k, v, lengths, triton=runs_triton(q))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _attention_fwd_op(q, k, v, lengths, scale)[0]
