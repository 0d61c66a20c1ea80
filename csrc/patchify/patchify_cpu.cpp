// CPU patchify / unpatchify: one task per patch row, contiguous runs of pw voxels copied with memcpy.
// ATen's generic permute copy walks an 8-d index per element; copying whole W-runs is several times
// faster (benchmarks/bench_patch_embed.py prints the ratio).
#include "patchify.h"

#include <ATen/Parallel.h>

#include <cstring>

#include "../common.h"

namespace {

struct Geometry {
  int64_t b, c, d, h, w, pd, ph, pw, gd, gh, gw, n, v;
};

Geometry make_geometry(int64_t b, int64_t c, int64_t d, int64_t h, int64_t w, int64_t pd, int64_t ph,
                       int64_t pw) {
  CHECK_POSITIVE(pd);
  CHECK_POSITIVE(ph);
  CHECK_POSITIVE(pw);
  TORCH_CHECK(d % pd == 0 && h % ph == 0 && w % pw == 0, "volume D,H,W = ", d, ",", h, ",", w,
              " is not divisible by the patch ", pd, ",", ph, ",", pw);
  Geometry g{b, c, d, h, w, pd, ph, pw, d / pd, h / ph, w / pw, 0, 0};
  g.n = g.gd * g.gh * g.gw;
  g.v = c * pd * ph * pw;
  return g;
}

// Calls fn(volume_offset, patch_offset, run_length) for each W-run of patch row r.
template <typename Fn>
inline void for_each_run(const Geometry& g, int64_t r, Fn fn) {
  const int64_t bi = r / g.n, ni = r % g.n;
  const int64_t z = ni / (g.gh * g.gw), y = (ni / g.gw) % g.gh, xw = ni % g.gw;
  const int64_t hw = g.h * g.w, dhw = g.d * hw;
  int64_t dst = r * g.v;
  for (int64_t c = 0; c < g.c; ++c) {
    for (int64_t i = 0; i < g.pd; ++i) {
      for (int64_t j = 0; j < g.ph; ++j) {
        const int64_t src = (bi * g.c + c) * dhw + (z * g.pd + i) * hw + (y * g.ph + j) * g.w + xw * g.pw;
        fn(src, dst, g.pw);
        dst += g.pw;
      }
    }
  }
}

int64_t grain_rows(const Geometry& g) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.v)); }

}  // namespace

at::Tensor patchify_cpu(const at::Tensor& x_in, int64_t pd, int64_t ph, int64_t pw) {
  CHECK_CPU(x_in);
  CHECK_DIM(x_in, 5);
  const auto x = x_in.contiguous();
  const auto g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), pd, ph, pw);
  auto out = at::empty({g.b, g.n, g.v}, x.options());
  const int64_t bytes = x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, g.b * g.n, grain_rows(g), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for_each_run(g, r, [&](int64_t s, int64_t d, int64_t len) {
        std::memcpy(dst + d * bytes, src + s * bytes, len * bytes);
      });
    }
  });
  return out;
}

at::Tensor unpatchify_cpu(const at::Tensor& p_in, int64_t pd, int64_t ph, int64_t pw, int64_t c, int64_t d,
                          int64_t h, int64_t w) {
  CHECK_CPU(p_in);
  CHECK_DIM(p_in, 3);
  const auto p = p_in.contiguous();
  const auto g = make_geometry(p.size(0), c, d, h, w, pd, ph, pw);
  TORCH_CHECK(p.size(1) == g.n && p.size(2) == g.v, "patches of shape ", p.sizes(), " do not match volume C,D,H,W = ",
              c, ",", d, ",", h, ",", w, " with patch ", pd, ",", ph, ",", pw, " (expected N=", g.n, ", V=", g.v, ")");
  auto out = at::empty({g.b, c, d, h, w}, p.options());
  const int64_t bytes = p.element_size();
  const char* src = static_cast<const char*>(p.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  // Patches do not overlap (stride = kernel), so rows write disjoint voxels: no races.
  at::parallel_for(0, g.b * g.n, grain_rows(g), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for_each_run(g, r, [&](int64_t s, int64_t dd, int64_t len) {
        std::memcpy(dst + s * bytes, src + dd * bytes, len * bytes);
      });
    }
  });
  return out;
}
