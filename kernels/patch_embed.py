"""3D patch embedding: tokens = linear(patchify(x)) + bias (+ pos), without an im2col tensor."""

from __future__ import annotations

import torch

from kernels.patchify import _check_volume, grid_shape, normalize_patch, patchify_ref


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


def patch_embed3d(x, weight, bias, pos=None, patch=None):
    """(B, C, D, H, W) -> (B, N, E); weight is Conv3d.weight.reshape(E, -1); pos optional (N, E)."""
    return patch_embed3d_ref(x, weight, bias, pos, patch)
