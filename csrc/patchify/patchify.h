// patchify / unpatchify of 3D volumes: (B, C, D, H, W) <-> (B, N, C*pd*ph*pw).
// Patches in raster order over (D/pd, H/ph, W/pw), W fastest; each flattened in (C, pd, ph, pw) order.
#pragma once
#include <torch/extension.h>

at::Tensor patchify_cpu(const at::Tensor& x, int64_t pd, int64_t ph, int64_t pw);
at::Tensor unpatchify_cpu(const at::Tensor& patches, int64_t pd, int64_t ph, int64_t pw, int64_t c,
                          int64_t d, int64_t h, int64_t w);

// No CUDA counterpart: on CUDA patchify is a pure permute copy that ATen's copy kernel already runs
// near HBM bandwidth, and the hot consumer (patch embedding) gathers patches inside its Triton
// matmul instead of materializing them (kernels/patch_embed.py).
