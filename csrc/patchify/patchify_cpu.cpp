// CPU patchify / unpatchify: one task per strip of gw patches (fixed b, z, y), contiguous runs of pw
// voxels copied with memcpy (benchmarks/bench_patch_embed.py prints the ratio to ATen's permute copy).
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

// Calls fn(volume_offset, patch_offset, run_length) for every W-run of the strip of gw patches
// (b, z, y) = task r, patch by patch. Each patch is written as one sequential stream; the C*pd*ph
// source rows of the strip (~100 KB for 16^3 patches) stay in L2 while the gw patches re-read them.
// (Writing all gw patches row by row instead makes gw streams 16 KB apart, which alias in L1 and
// measured 1.3x slower; a whole-volume patch-by-patch walk misses L2.)
template <typename Fn>
inline void for_each_run(const Geometry& g, int64_t r, Fn fn) {
  const int64_t bi = r / (g.gd * g.gh), z = (r / g.gh) % g.gd, y = r % g.gh;
  const int64_t hw = g.h * g.w, dhw = g.d * hw;
  const int64_t first_patch = (bi * g.gd * g.gh + z * g.gh + y) * g.gw;
  for (int64_t xw = 0; xw < g.gw; ++xw) {
    int64_t dst = (first_patch + xw) * g.v;
    for (int64_t c = 0; c < g.c; ++c) {
      for (int64_t i = 0; i < g.pd; ++i) {
        int64_t src = (bi * g.c + c) * dhw + (z * g.pd + i) * hw + y * g.ph * g.w + xw * g.pw;
        for (int64_t j = 0; j < g.ph; ++j, src += g.w, dst += g.pw) fn(src, dst, g.pw);
      }
    }
  }
}

int64_t num_tasks(const Geometry& g) { return g.b * g.gd * g.gh; }

int64_t grain_tasks(const Geometry& g) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.v * g.gw));
}

// Copies one W-run. PW > 0 fixes the run length at compile time: the copy becomes a few vector moves
// instead of a memcpy call (a call per 16 voxels cost more than the copy itself).
template <typename T, int PW>
inline void copy_run(T* __restrict dst, const T* __restrict src, int64_t len) {
  if constexpr (PW > 0) {
    for (int l = 0; l < PW; ++l) dst[l] = src[l];
  } else {
    std::memcpy(dst, src, len * sizeof(T));
  }
}

// direction: true = volume -> patches (patchify), false = patches -> volume (unpatchify).
template <typename T, int PW>
void run_all(const Geometry& g, const T* src, T* dst, bool to_patches) {
  at::parallel_for(0, num_tasks(g), grain_tasks(g), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for_each_run(g, r, [&](int64_t vol, int64_t pat, int64_t len) {
        if (to_patches)
          copy_run<T, PW>(dst + pat, src + vol, len);
        else
          copy_run<T, PW>(dst + vol, src + pat, len);
      });
    }
  });
}

template <typename T>
void dispatch_pw(const Geometry& g, const T* src, T* dst, bool to_patches) {
  switch (g.pw) {
    case 4: return run_all<T, 4>(g, src, dst, to_patches);
    case 8: return run_all<T, 8>(g, src, dst, to_patches);
    case 16: return run_all<T, 16>(g, src, dst, to_patches);
    case 32: return run_all<T, 32>(g, src, dst, to_patches);
    default: return run_all<T, 0>(g, src, dst, to_patches);
  }
}

// Copies are by element size only (a patchify moves bits), so every dtype shares three instances.
void copy_all(const Geometry& g, const at::Tensor& src, at::Tensor& dst, bool to_patches) {
  const void* s = src.const_data_ptr();
  void* d = dst.mutable_data_ptr();
  switch (src.element_size()) {
    case 1: return dispatch_pw(g, static_cast<const uint8_t*>(s), static_cast<uint8_t*>(d), to_patches);
    case 2: return dispatch_pw(g, static_cast<const uint16_t*>(s), static_cast<uint16_t*>(d), to_patches);
    case 4: return dispatch_pw(g, static_cast<const uint32_t*>(s), static_cast<uint32_t*>(d), to_patches);
    case 8: return dispatch_pw(g, static_cast<const uint64_t*>(s), static_cast<uint64_t*>(d), to_patches);
    default: TORCH_CHECK(false, "patchify: unsupported element size ", src.element_size());
  }
}

}  // namespace

at::Tensor patchify_cpu(const at::Tensor& x_in, int64_t pd, int64_t ph, int64_t pw) {
  CHECK_CPU(x_in);
  CHECK_DIM(x_in, 5);
  const auto x = x_in.contiguous();
  const auto g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), pd, ph, pw);
  auto out = at::empty({g.b, g.n, g.v}, x.options());
  copy_all(g, x, out, true);
  return out;
}

at::Tensor unpatchify_cpu(const at::Tensor& p_in, int64_t pd, int64_t ph, int64_t pw, int64_t c, int64_t d,
                          int64_t h, int64_t w) {
  CHECK_CPU(p_in);
  CHECK_DIM(p_in, 3);
  const auto p = p_in.contiguous();
  const auto g = make_geometry(p.size(0), c, d, h, w, pd, ph, pw);
  TORCH_CHECK(p.size(1) == g.n && p.size(2) == g.v, "patches of shape ", p.sizes(),
              " do not match volume C,D,H,W = ", c, ",", d, ",", h, ",", w, " with patch ", pd, ",", ph, ",", pw,
              " (expected N=", g.n, ", V=", g.v, ")");
  auto out = at::empty({g.b, c, d, h, w}, p.options());
  // Patches do not overlap (stride = kernel), so tasks write disjoint voxels: no races.
  copy_all(g, p, out, false);
  return out;
}
