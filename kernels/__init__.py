"""voxmix kernels: attention, 3D patch embedding, patchify and the fused MAE loss.

Each op is one custom op (`torch.ops.voxmix.*`) that dispatches per call on its tensors' device and
the kernel backend (`get_backend` / `set_backend` / `use_backend`, kernels/backend.py; table in
docs/kernels.md), and has a plain-PyTorch `<op>_ref`.
"""

from voxmix.kernels import _ext
from voxmix.kernels.attention import attention, attention_ref
from voxmix.kernels.backend import BACKENDS, Backend, get_backend, set_backend, use_backend
from voxmix.kernels.mae_loss import mae_loss, mae_loss_ref
from voxmix.kernels.patch_embed import patch_embed3d, patch_embed3d_ref
from voxmix.kernels.patchify import patchify, patchify_ref, unpatchify, unpatchify_ref

if _ext.interpreter() and (_why := _ext.interpreter_problem()):
    raise ImportError(_why)

__all__ = [
    "BACKENDS",
    "Backend",
    "attention",
    "attention_ref",
    "get_backend",
    "mae_loss",
    "mae_loss_ref",
    "patch_embed3d",
    "patch_embed3d_ref",
    "patchify",
    "patchify_ref",
    "set_backend",
    "unpatchify",
    "unpatchify_ref",
    "use_backend",
]
