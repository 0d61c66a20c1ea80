"""Triton backward kernels of `kernels.attention` (FlashAttention-2 style, no atomics).

Three kernels: `_attention_bwd_preprocess_kernel` (delta = rowsum(dO * O)), `_attention_bwd_dkdv_kernel`
(one program per key block, looping over query blocks) and `_attention_bwd_dq_kernel` (one program
per query block, looping over key blocks). Two passes recompute P twice but need no atomic adds, so
results are deterministic run to run, which the golden-curve test of the trainer relies on.
"""

from __future__ import annotations

import triton
import triton.language as tl

from voxmix.kernels._ext import autotune, interpreter


def bwd_configs():
    if interpreter():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    if not autotune():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)]
    # Backward holds two (BLOCK, D) accumulators plus K, V (or Q, dO) tiles: 64x64 tiles keep that
    # in registers at D = 128 on Hopper; 128x64 / 64x128 pay off for long sequences at D = 64.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (32, 64, 4, 2),
            (64, 64, 4, 2),
            (32, 128, 4, 3),  # dk/dv: many resident keys, short query steps
            (128, 32, 4, 3),  # dq: many resident queries, short key steps
            (64, 128, 8, 2),
            (128, 64, 8, 2),
        ]
    ]


@triton.jit
def _attention_bwd_preprocess_kernel(
    Out, DO, DELTA,  # pointers (o and do contiguous (B, H, N, D); delta (B*H, N) fp32)
    N_CTX, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # int64: B*H*N*Dh may pass 2^31 for large batches
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM)
    off = pid_bh * N_CTX * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh * N_CTX + offs_m, tl.sum(o * do, 1), mask=offs_m < N_CTX)


@triton.autotune(configs=bwd_configs(), key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attention_bwd_dkdv_kernel(
    # pointers (DO, DK, DV contiguous (B, H, N, D) with strides so*; LSE, DELTA (B*H, N) fp32)
    Q, K, V, DO, LSE, DELTA, DK, DV, LENS,
    # sizes
    scale, H, N_CTX, N_BUCKET,
    # strides
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son,
    # meta-parameters
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # int64: B*H*N*Dh may pass 2^31 for large batches
    b = pid_bh // H
    h = pid_bh % H
    kv_len = tl.load(LENS + b)  # valid keys of this item (N when the batch is not padded)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    mask_n = offs_n < kv_len  # padded keys get dk = dv = 0

    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # fmt: skip
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # fmt: skip
    qt_base = Q + b * sqb + h * sqh + offs_d[:, None] * sqd  # Q^T tile: (BLOCK_D, BLOCK_M)
    dot_base = DO + b * sob + h * soh + offs_d[:, None]  # dO^T tile
    qk_scale = scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if pid_n * BLOCK_N < kv_len:
        for start_m in range(0, N_CTX, BLOCK_M):
            offs_m = start_m + offs_m0
            mask_m = offs_m < N_CTX
            qt = tl.load(qt_base + offs_m[None, :] * sqn, mask=mask_d[:, None] & mask_m[None, :], other=0.0)
            dot = tl.load(dot_base + offs_m[None, :] * son, mask=mask_d[:, None] & mask_m[None, :], other=0.0)
            lse = tl.load(LSE + pid_bh * N_CTX + offs_m, mask=mask_m, other=0.0)
            delta = tl.load(DELTA + pid_bh * N_CTX + offs_m, mask=mask_m, other=0.0)
            # P^T (BLOCK_N, BLOCK_M) recomputed from the saved base-2 log-sum-exp.
            pt = tl.math.exp2(tl.dot(k, qt, input_precision=DOT_PREC) * qk_scale - lse[None, :])
            pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0.0)
            dv = tl.dot(pt.to(v.dtype), tl.trans(dot), dv, input_precision=DOT_PREC)
            dpt = tl.dot(v, dot, input_precision=DOT_PREC)
            dst = pt * (dpt - delta[None, :])
            dk = tl.dot(dst.to(k.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
    out = pid_bh * N_CTX * HEAD_DIM + offs_n[:, None] * son + offs_d[None, :]
    mask_out = (offs_n[:, None] < N_CTX) & mask_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=mask_out)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask_out)


@triton.autotune(configs=bwd_configs(), key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attention_bwd_dq_kernel(
    # pointers
    Q, K, V, DO, LSE, DELTA, DQ, LENS,
    # sizes
    scale, H, N_CTX, N_BUCKET,
    # strides
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son,
    # meta-parameters
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # int64: B*H*N*Dh may pass 2^31 for large batches
    b = pid_bh // H
    h = pid_bh % H
    kv_len = tl.load(LENS + b)  # valid keys of this item (N when the batch is not padded)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    mask_m = offs_m < N_CTX

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # fmt: skip
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :],
                 mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # fmt: skip
    lse = tl.load(LSE + pid_bh * N_CTX + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + pid_bh * N_CTX + offs_m, mask=mask_m, other=0.0)
    kt_base = K + b * skb + h * skh + offs_d[:, None] * skd
    vt_base = V + b * svb + h * svh + offs_d[:, None] * svd
    qk_scale = scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < kv_len
        kt = tl.load(kt_base + offs_n[None, :] * skn, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        vt = tl.load(vt_base + offs_n[None, :] * svn, mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        p = tl.math.exp2(tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
    out = pid_bh * N_CTX * HEAD_DIM + offs_m[:, None] * son + offs_d[None, :]
    tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
