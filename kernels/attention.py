"""Bidirectional multi-head attention for short, odd-length token sequences (3D ViT MAE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def attention(q, k, v, *, scale=None, lengths=None):
    """softmax(q k^T * scale) v over (B, H, N, Dh); `lengths` (B,) masks padded keys."""
    mask = None
    if lengths is not None:
        mask = ~_key_mask(lengths.to(q.device), k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
