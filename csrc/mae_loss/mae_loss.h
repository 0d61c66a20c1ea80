// Fused masked MAE reconstruction loss with per-patch target normalization (norm_pix_loss).
#pragma once
#include <torch/extension.h>

#include <tuple>

// pred (B, M, V) with V = C*pd*ph*pw, x (B, C, D, H, W), mask_idx (B, M) int64 raster patch indices.
// Returns per_sample (B,) fp32 = mean over (m, v) of (pred - target)^2 and, when need_grad, the
// gradient of sum(per_sample) w.r.t. pred, 2 (pred - target) / (M V), in pred's dtype (else empty).
std::tuple<at::Tensor, at::Tensor> mae_loss_cpu(const at::Tensor& pred, const at::Tensor& x,
                                                const at::Tensor& mask_idx, int64_t pd, int64_t ph,
                                                int64_t pw, bool norm_pix, double eps, bool need_grad);

// No CUDA counterpart: the op is a bandwidth-bound gather + two row reductions; the Triton kernel in
// kernels/mae_loss.py already streams it at HBM speed, so hand-written CUDA would add a build
// dependency without a measurable gain.
