// CPU masked MAE loss: one task per masked patch; the target patch is gathered into a per-thread
// buffer of V floats (never a (B, M, V) tensor), normalized, and compared in a single sweep that also
// writes the gradient. Row sums are kept per (b, m) and reduced in a fixed order: deterministic.
#include "mae_loss.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../common.h"

namespace {

// Sum of f(v) for v < n in float64, in 8 independent lanes: the lanes need no reassociation, so the
// compiler vectorizes the loop (a single running double sum is a serial chain of dependent adds,
// which made this op 3x slower).
template <typename F>
inline double lane_sum(int64_t n, F f) {
  constexpr int L = 8;
  double lanes[L] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t v = 0;
  for (; v + L <= n; v += L)
    for (int l = 0; l < L; ++l) lanes[l] += static_cast<double>(f(v + l));
  double s = 0.0;
  for (; v < n; ++v) s += static_cast<double>(f(v));
  for (int l = 0; l < L; ++l) s += lanes[l];
  return s;
}

// Serial, before any worker thread starts: an exception thrown inside at::parallel_for crashed the
// process (SIGSEGV) on a 16-core H200 host with torch 2.11's OpenMP build, so no check runs in there.
// B*M int64 reads are negligible next to the B*M*V sweep.
void check_indices(const at::Tensor& idx, const at::Tensor& x, int64_t pd, int64_t ph, int64_t pw) {
  const int64_t D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t N = (D / pd) * (H / ph) * (W / pw), M = idx.size(1);
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < idx.numel(); ++r) {
    const int64_t n = ip[r];
    TORCH_CHECK(n >= 0 && n < N, "mask_idx[", r / M, ", ", r % M, "] = ", n, " is out of range [0, ", N,
                ") for a volume of ", D, "x", H, "x", W, " with patch ", pd, "x", ph, "x", pw);
  }
}

template <typename xt, typename pt>
void mae_rows(const at::Tensor& pred, const at::Tensor& x, const at::Tensor& idx, int64_t pd, int64_t ph,
              int64_t pw, bool norm_pix, double eps, at::Tensor& row_loss, at::Tensor* grad) {
  const int64_t B = x.size(0), C = x.size(1), D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t M = pred.size(1), V = pred.size(2);
  const int64_t gh = H / ph, gw = W / pw;
  const int64_t HW = H * W, DHW = D * HW;
  const xt* xp = x.const_data_ptr<xt>();
  const pt* pp = pred.const_data_ptr<pt>();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  float* lp = row_loss.mutable_data_ptr<float>();
  pt* gp = grad ? grad->mutable_data_ptr<pt>() : nullptr;
  const float gscale = 2.0f / static_cast<float>(M * V);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / V);

  at::parallel_for(0, B * M, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> t(V);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / M;
      const int64_t n = ip[r];  // in [0, N): checked by check_indices before the parallel region
      const int64_t z = n / (gh * gw), y = (n / gw) % gh, xw = n % gw;
      int64_t k = 0;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < pd; ++i)
          for (int64_t j = 0; j < ph; ++j, k += pw) {
            const xt* src = xp + (b * C + c) * DHW + (z * pd + i) * HW + (y * ph + j) * W + xw * pw;
            for (int64_t l = 0; l < pw; ++l) t[k + l] = static_cast<float>(src[l]);
          }
      float mean = 0.0f, inv_std = 1.0f;
      if (norm_pix) {
        const float* tp = t.data();
        mean = static_cast<float>(lane_sum(V, [&](int64_t v) { return tp[v]; }) / V);
        // Two-pass variance: no cancellation for volumes with a large offset (CT in HU).
        const double ss = lane_sum(V, [&](int64_t v) { return (tp[v] - mean) * (tp[v] - mean); });
        inv_std = static_cast<float>(1.0 / std::sqrt(ss / (V - 1) + eps));
      }
      const pt* prow = pp + r * V;
      const float* tp = t.data();
      double acc;
      if (gp) {
        pt* grow = gp + r * V;
        acc = lane_sum(V, [&](int64_t v) {
          const float diff = static_cast<float>(prow[v]) - (tp[v] - mean) * inv_std;
          grow[v] = static_cast<pt>(diff * gscale);
          return diff * diff;
        });
      } else {
        acc = lane_sum(V, [&](int64_t v) {
          const float diff = static_cast<float>(prow[v]) - (tp[v] - mean) * inv_std;
          return diff * diff;
        });
      }
      lp[r] = static_cast<float>(acc);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mae_loss_cpu(const at::Tensor& pred_in, const at::Tensor& x_in,
                                                const at::Tensor& idx_in, int64_t pd, int64_t ph,
                                                int64_t pw, bool norm_pix, double eps, bool need_grad) {
  CHECK_CPU(pred_in);
  CHECK_CPU(x_in);
  CHECK_CPU(idx_in);
  CHECK_DIM(pred_in, 3);
  CHECK_DIM(x_in, 5);
  CHECK_DIM(idx_in, 2);
  CHECK_FLOATING(pred_in);
  CHECK_FLOATING(x_in);
  CHECK_POSITIVE(pd);
  CHECK_POSITIVE(ph);
  CHECK_POSITIVE(pw);
  TORCH_CHECK(idx_in.scalar_type() == at::kLong, "mask_idx must be int64, got ", idx_in.scalar_type());
  const auto pred = pred_in.contiguous();
  const auto x = x_in.contiguous();
  const auto idx = idx_in.contiguous();
  const int64_t B = x.size(0), M = pred.size(1), V = pred.size(2);
  TORCH_CHECK(x.size(2) % pd == 0 && x.size(3) % ph == 0 && x.size(4) % pw == 0, "volume ", x.sizes(),
              " is not divisible by the patch ", pd, ",", ph, ",", pw);
  TORCH_CHECK(pred.size(0) == B && idx.size(0) == B && idx.size(1) == M, "pred ", pred.sizes(), ", x ",
              x.sizes(), " and mask_idx ", idx.sizes(), " disagree on B or M");
  TORCH_CHECK(V == x.size(1) * pd * ph * pw, "pred has patch length ", V, " but C*pd*ph*pw = ",
              x.size(1) * pd * ph * pw);
  TORCH_CHECK(M > 0, "mask_idx selects no patches (M = 0): the loss would be a mean over nothing");
  TORCH_CHECK(!norm_pix || V > 1, "norm_pix needs patches of at least 2 voxels (unbiased variance)");

  check_indices(idx, x, pd, ph, pw);

  auto row_loss = at::empty({B, M}, x.options().dtype(at::kFloat));
  at::Tensor grad;
  if (need_grad) grad = at::empty_like(pred);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mae_loss_cpu_x", [&] {
    using xt = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "mae_loss_cpu_pred", [&] {
      mae_rows<xt, scalar_t>(pred, x, idx, pd, ph, pw, norm_pix, eps, row_loss, need_grad ? &grad : nullptr);
    });
  });
  // Sum rows in float64 in a fixed order, then divide: the per-sample mean over (m, v).
  auto per_sample = (row_loss.to(at::kDouble).sum(1) / static_cast<double>(M * V)).to(at::kFloat);
  return {per_sample, grad};
}
