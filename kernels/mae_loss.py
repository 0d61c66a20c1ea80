"""Fused masked reconstruction loss with per-patch target normalization (MAE's norm_pix_loss)."""

from __future__ import annotations

import torch

from kernels.patchify import normalize_patch, patchify_ref


def mae_loss_ref(pred, x, mask_idx, patch, *, norm_pix=True, eps=1e-6):
    """Plain PyTorch MAE loss (computed in fp32) -> (loss, per_sample (B,))."""
    patch = normalize_patch(patch)
    target = patchify_ref(x.detach(), patch).float()
    target = torch.gather(target, 1, mask_idx[:, :, None].expand(-1, -1, target.shape[-1]))
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, unbiased=True, keepdim=True)
        target = (target - mean) / torch.sqrt(var + eps)
    per_sample = ((pred.float() - target) ** 2).mean(dim=(1, 2))
    return per_sample.mean(), per_sample


def mae_loss(pred, x, mask_idx, patch, *, norm_pix=True, eps=1e-6):
    """(loss, per_sample) for predictions of the masked patches; differentiable in pred only."""
    return mae_loss_ref(pred, x, mask_idx, patch, norm_pix=norm_pix, eps=eps)
