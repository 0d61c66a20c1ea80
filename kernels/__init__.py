"""voxmix kernels: attention, 3D patch embedding, patchify and the fused MAE loss.

Each op dispatches by device (see docs/kernels.md for the table) and has a plain-PyTorch `<op>_ref`.
"""

from kernels import _ext
from kernels.attention import attention, attention_ref
from kernels.mae_loss import mae_loss, mae_loss_ref
from kernels.patch_embed import patch_embed3d, patch_embed3d_ref
from kernels.patchify import patchify, patchify_ref, unpatchify, unpatchify_ref

if _ext.interpreter() and (_why := _ext.interpreter_problem()):
    raise ImportError(_why)

__all__ = [
    "attention",
    "attention_ref",
    "mae_loss",
    "mae_loss_ref",
    "patch_embed3d",
    "patch_embed3d_ref",
    "patchify",
    "patchify_ref",
    "unpatchify",
    "unpatchify_ref",
]
