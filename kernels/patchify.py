"""Patchify / unpatchify of 3D volumes: (B, C, D, H, W) <-> (B, N, C*pd*ph*pw).

Patches are in raster order over (D/pd, H/ph, W/pw) with W fastest; each patch is flattened in
(C, pd, ph, pw) order, i.e. exactly like `Conv3d.weight.reshape(E, -1)` (docs/interfaces.md).
"""

from __future__ import annotations

import torch

from voxmix.kernels import _ext


def normalize_patch(patch) -> tuple[int, int, int]:
    """(p,) / p / (pd, ph, pw) -> (pd, ph, pw) of positive ints, with a readable error otherwise."""
    if isinstance(patch, int):
        patch = (patch, patch, patch)
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or any(p < 1 for p in patch):
        raise ValueError(f"patch must be an int or 3 positive ints (pd, ph, pw), got {patch!r}")
    return patch


def grid_shape(shape, patch) -> tuple[int, int, int]:
    """Number of patches along (D, H, W); raises when a side is not divisible by its patch size."""
    pd, ph, pw = normalize_patch(patch)
    d, h, w = (int(s) for s in shape[-3:])
    for name, size, p in (("D", d, pd), ("H", h, ph), ("W", w, pw)):
        if size % p != 0:
            raise ValueError(
                f"volume side {name}={size} is not divisible by its patch size {p} "
                f"(volume D,H,W = {d},{h},{w}; patch = {pd},{ph},{pw})"
            )
    return d // pd, h // ph, w // pw


def _check_volume(x: torch.Tensor, name: str = "x") -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} must have shape (B, C, D, H, W), got {tuple(x.shape)}")


def patchify_ref(x: torch.Tensor, patch) -> torch.Tensor:
    """Plain PyTorch patchify (a reshape + permute copy)."""
    _check_volume(x)
    pd, ph, pw = normalize_patch(patch)
    gd, gh, gw = grid_shape(x.shape, (pd, ph, pw))
    b, c = x.shape[:2]
    y = x.reshape(b, c, gd, pd, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return y.reshape(b, gd * gh * gw, c * pd * ph * pw)


def volume_shape(patches: torch.Tensor, patch, shape) -> tuple[int, int, int, int, int]:
    """Resolve `shape` ((D, H, W), (C, D, H, W) or (B, C, D, H, W)) against patches (B, N, V)."""
    pd, ph, pw = normalize_patch(patch)
    if patches.dim() != 3:
        raise ValueError(f"patches must have shape (B, N, C*pd*ph*pw), got {tuple(patches.shape)}")
    b, n, v = patches.shape
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4, 5):
        raise ValueError(f"shape must be (D, H, W), (C, D, H, W) or (B, C, D, H, W), got {shape}")
    if v % (pd * ph * pw) != 0:
        raise ValueError(f"patch length {v} is not a multiple of pd*ph*pw = {pd * ph * pw}")
    c = v // (pd * ph * pw)
    if len(shape) >= 4 and shape[-4] != c:
        raise ValueError(f"shape has C={shape[-4]} but patches of length {v} imply C={c}")
    if len(shape) == 5 and shape[0] != b:
        raise ValueError(f"shape has B={shape[0]} but patches have B={b}")
    gd, gh, gw = grid_shape(shape, (pd, ph, pw))
    if gd * gh * gw != n:
        raise ValueError(f"shape {shape} with patch {(pd, ph, pw)} gives {gd * gh * gw} patches, got N={n}")
    return b, c, shape[-3], shape[-2], shape[-1]


def unpatchify_ref(patches: torch.Tensor, patch, shape) -> torch.Tensor:
    """Plain PyTorch inverse of `patchify_ref`."""
    pd, ph, pw = normalize_patch(patch)
    b, c, d, h, w = volume_shape(patches, patch, shape)
    y = patches.reshape(b, d // pd, h // ph, w // pw, c, pd, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return y.reshape(b, c, d, h, w)


# ---------------------------------------------------------------------------------------------------
# Custom ops, the only path of `patchify` / `unpatchify`. CPU: C++ (csrc/patchify) when built, else the
# reference. CUDA: the reference permute copy, which ATen runs near HBM bandwidth (see the note in
# csrc/patchify/patchify.h). There is no Triton kernel, so the backend (kernels/backend.py) does not
# matter here: the interpreter backend also runs the C++ copy.


def _patchify_impl(x: torch.Tensor, pd: int, ph: int, pw: int) -> torch.Tensor:
    mod = _ext.ext() if x.device.type == "cpu" else None
    if mod is not None:
        return mod.patchify_cpu(x, pd, ph, pw)
    return patchify_ref(x, (pd, ph, pw)).contiguous()


def _unpatchify_impl(
    p: torch.Tensor, pd: int, ph: int, pw: int, c: int, d: int, h: int, w: int
) -> torch.Tensor:
    mod = _ext.ext() if p.device.type == "cpu" else None
    if mod is not None:
        return mod.unpatchify_cpu(p, pd, ph, pw, c, d, h, w)
    return unpatchify_ref(p, (pd, ph, pw), (p.shape[0], c, d, h, w)).contiguous()


@torch.library.custom_op("voxmix::patchify", mutates_args=())
def _patchify_op(x: torch.Tensor, pd: int, ph: int, pw: int) -> torch.Tensor:
    return _patchify_impl(x, pd, ph, pw)


@_patchify_op.register_fake
def _(x, pd, ph, pw):
    b, c, d, h, w = x.shape
    return x.new_empty((b, (d // pd) * (h // ph) * (w // pw), c * pd * ph * pw))


@torch.library.custom_op("voxmix::unpatchify", mutates_args=())
def _unpatchify_op(
    p: torch.Tensor, pd: int, ph: int, pw: int, c: int, d: int, h: int, w: int
) -> torch.Tensor:
    return _unpatchify_impl(p, pd, ph, pw, c, d, h, w)


@_unpatchify_op.register_fake
def _(p, pd, ph, pw, c, d, h, w):
    return p.new_empty((p.shape[0], c, d, h, w))


def _patchify_setup(ctx, inputs, output):
    x, ctx.pd, ctx.ph, ctx.pw = inputs
    ctx.shape = tuple(x.shape[1:])


def _patchify_bwd(ctx, grad):
    # patchify is a permutation: its adjoint is unpatchify.
    return _unpatchify_op(grad.contiguous(), ctx.pd, ctx.ph, ctx.pw, *ctx.shape), None, None, None


def _unpatchify_setup(ctx, inputs, output):
    ctx.pd, ctx.ph, ctx.pw = inputs[1:4]


def _unpatchify_bwd(ctx, grad):
    return (_patchify_op(grad.contiguous(), ctx.pd, ctx.ph, ctx.pw),) + (None,) * 7


_patchify_op.register_autograd(_patchify_bwd, setup_context=_patchify_setup)
_unpatchify_op.register_autograd(_unpatchify_bwd, setup_context=_unpatchify_setup)


def patchify(x: torch.Tensor, patch) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, C*pd*ph*pw), contiguous; differentiable (backward = unpatchify)."""
    _check_volume(x)
    pd, ph, pw = normalize_patch(patch)
    grid_shape(x.shape, (pd, ph, pw))
    return _patchify_op(x, pd, ph, pw)


def unpatchify(patches: torch.Tensor, patch, shape) -> torch.Tensor:
    """(B, N, C*pd*ph*pw) -> (B, C, D, H, W); `shape` is (D, H, W), (C, D, H, W) or (B, C, D, H, W)."""
    pd, ph, pw = normalize_patch(patch)
    _, c, d, h, w = volume_shape(patches, (pd, ph, pw), shape)
    return _unpatchify_op(patches, pd, ph, pw, c, d, h, w)
