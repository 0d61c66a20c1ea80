"""Triton forward kernel of `kernels.attention`: FlashAttention-2 online softmax, any N, key lengths.

Kept apart from kernels/attention.py (launchers, custom op, API) to keep files short.
"""

from __future__ import annotations

import triton
import triton.language as tl

from voxmix.kernels._ext import autotune, interpreter

# log2(e): the kernels work in base 2 (exp2 is one MUFU instruction); LSE is saved in base-2 units.
LOG2E = 1.4426950408889634


def fwd_configs():
    if interpreter():
        # One config: the interpreter cannot time configs, and 16 is tl.dot's smallest tile.
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    if not autotune():
        # Fits shared memory for every dtype and head dim on Ampere and Hopper (fp32, Dh=128: ~96 KB).
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)]
    # Hopper: 128-row Q tiles with 8 warps fill the tensor cores for long N; 64-row tiles keep more
    # CTAs in flight for the short MAE sequences (55 visible tokens + cls, 216 patches).
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 32, 4, 2),
            (64, 64, 4, 3),
            (64, 64, 4, 4),
            (128, 64, 8, 3),
            (128, 64, 4, 3),
            (128, 128, 8, 3),
        ]
    ]


@triton.autotune(configs=fwd_configs(), key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attention_fwd_kernel(
    # pointers
    Q,
    K,
    V,
    Out,
    LSE,
    LENS,
    # sizes
    scale,
    H,
    N_CTX,
    N_BUCKET,  # next power of two of N_CTX: the autotune key, so odd lengths share a tuned config
    # strides (q, k, v may be views, e.g. of a fused qkv projection; o is contiguous)
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sob,
    soh,
    son,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two (80 -> 128): tl.arange needs it
    DOT_PREC: tl.constexpr,  # "ieee" for fp32 inputs (no silent TF32), "tf32" otherwise (ignored)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # int64: B*H*N*Dh may pass 2^31 for large batches
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    mask_m = offs_m < N_CTX

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    kt_base = K + b * skb + h * skh + offs_d[:, None] * skd  # K^T tile: (BLOCK_D, BLOCK_N)
    v_base = V + b * svb + h * svh + offs_d[None, :] * svd

    kv_len = tl.load(LENS + b)  # valid keys of this item (N when the batch is not padded)
    qk_scale = scale * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        offs = start_n + offs_n
        mask_n = offs < kv_len
        kt = tl.load(kt_base + offs[None, :] * skn, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        qk = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        # Tail of the last block (and padded keys) -> -inf: the block size need not divide N.
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs[:, None] * svn, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = Out + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + pid_bh * N_CTX + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
