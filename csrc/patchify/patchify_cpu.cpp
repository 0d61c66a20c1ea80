// CPU patchify / unpatchify: one task per strip of gw patches (fixed b, z, y); each contiguous W-run of
// pw voxels is copied as a few vector moves (benchmarks/bench_patch_embed.py prints the ratio to
// ATen's permute copy, the reference `patchify_ref`).
//
// Where the time went (8x1x96^3 fp32, p16, 1 thread, shared 2-core Zen 5 VM;
// clone() of the volume = 1.3-1.5 ms):
// - Reads. Each patch reads one 64 B line from each of its 256 rows (16 slices 36 KB apart); the
//   hardware prefetchers do not follow that, so every line was a demand miss (2.4-2.5 ms). The next
//   patch reads the adjacent line of the same rows, so we prefetch it one patch ahead: 1.6 ms.
// - Writes. A plain store to a line not in cache first reads it (read-for-ownership), so a copy moves
//   3x the bytes. Outputs larger than the cache are written with non-temporal (streaming) stores
//   instead, as glibc's memcpy does for large copies: 1.5-2.0 ms, 0.75-1.0x clone()'s bandwidth; the
//   reference takes 4.0-4.4 ms (2.3-2.9x). Unpatchify streams into the volume in memory order (W-rows
//   across the patches of a strip, <= 8 patch read streams at a time, each prefetched ahead), which
//   keeps the write stream sequential: 2.1-2.4 ms -> 1.3-1.9 ms; 2x1x128^3/p8: 1.4-1.5 -> 0.8-1.7 ms.
// - Allocation is not the cap: a 28 MB at::empty is reused from the heap (no page faults; only
//   >= 32 MiB blocks go to mmap, and then both sides pay the faults alike).
#include "patchify.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define VOXMIX_STREAMING_STORES 1
#else
#define VOXMIX_STREAMING_STORES 0
#endif

namespace {

// Outputs at least this large are written with streaming stores. Below it a plain store leaves the
// output in L2/L3 for its consumer: measured with a following sum(), plain stores win at <= 8 MB and
// streaming wins at >= 13.5 MB on this 32 MB-L3 VM (glibc's memcpy switches at 3/4 of the L3 share
// per thread, also ~12 MB here).
constexpr int64_t kStreamBytes = int64_t{12} << 20;

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

int64_t num_tasks(const Geometry& g) { return g.b * g.gd * g.gh; }

int64_t grain_tasks(const Geometry& g) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.v * g.gw));
}

// Element offset of the first voxel of task r = strip (b, z, y), and its first patch.
struct Strip {
  int64_t vol, first_patch;
};

Strip strip(const Geometry& g, int64_t r) {
  const int64_t bi = r / (g.gd * g.gh), z = (r / g.gh) % g.gd, y = r % g.gh;
  return {bi * g.c * g.d * g.h * g.w + z * g.pd * g.h * g.w + y * g.ph * g.w,
          (bi * g.gd * g.gh + z * g.gh + y) * g.gw};
}

// Calls fn(volume_offset, patch_offset) for every W-run of strip r,
// patch by patch: each patch is written as one sequential stream, and the C*pd*ph source rows of the
// strip (~100 KB for 16^3 patches) stay in L2 while the gw patches re-read them. (Writing all gw
// patches row by row with plain stores makes gw streams 16 KB apart, which alias in L1: 1.3x slower.)
template <typename Fn>
inline void runs_patch_order(const Geometry& g, int64_t r, Fn fn) {
  const Strip s = strip(g, r);
  const int64_t hw = g.h * g.w, dhw = g.d * hw;
  for (int64_t xw = 0; xw < g.gw; ++xw) {
    int64_t pat = (s.first_patch + xw) * g.v;
    for (int64_t c = 0; c < g.c; ++c) {
      for (int64_t i = 0; i < g.pd; ++i) {
        int64_t vol = s.vol + c * dhw + i * hw + xw * g.pw;
        for (int64_t j = 0; j < g.ph; ++j, vol += g.w, pat += g.pw) fn(vol, pat);
      }
    }
  }
}

// The same runs in volume memory order (each W-row of the strip left to right), in column blocks of at
// most kReadStreams patches: a block reads that many patch streams at once, and more than the hardware
// prefetchers track (p8: 16 patches 2 KB apart) measured bimodal, 0.7-2.3 ms for 16 MB.
constexpr int64_t kReadStreams = 8;

template <typename Fn>
inline void runs_volume_order(const Geometry& g, int64_t r, Fn fn) {
  const Strip s = strip(g, r);
  const int64_t hw = g.h * g.w, dhw = g.d * hw, ppatch = g.pd * g.ph * g.pw;
  for (int64_t x0 = 0; x0 < g.gw; x0 += kReadStreams) {
    const int64_t x1 = std::min(g.gw, x0 + kReadStreams);
    for (int64_t c = 0; c < g.c; ++c) {
      for (int64_t i = 0; i < g.pd; ++i) {
        for (int64_t j = 0; j < g.ph; ++j) {
          const int64_t vol = s.vol + c * dhw + i * hw + j * g.w;
          const int64_t pat = s.first_patch * g.v + c * ppatch + (i * g.ph + j) * g.pw;
          for (int64_t xw = x0; xw < x1; ++xw) fn(vol + xw * g.pw, pat + xw * g.v);
        }
      }
    }
  }
}

// Copies one W-run. PW > 0 fixes the run length at compile time: the copy becomes a few vector moves
// instead of a memcpy call (a call per 16 voxels cost more than the copy itself). STREAM: non-temporal
// 16 B stores; needs PW * sizeof(T) % 16 == 0 and a 16 B-aligned dst (checked by the caller).
template <typename T, int PW, bool STREAM>
inline void copy_run(T* __restrict dst, const T* __restrict src, int64_t len) {
  if constexpr (STREAM) {
#if VOXMIX_STREAMING_STORES
    static_assert(PW > 0 && PW * sizeof(T) % 16 == 0, "streaming runs are whole 16 B vectors");
    auto* d = reinterpret_cast<__m128i*>(dst);
    const auto* s = reinterpret_cast<const __m128i*>(src);
    for (size_t l = 0; l < PW * sizeof(T) / 16; ++l) _mm_stream_si128(d + l, _mm_loadu_si128(s + l));
#endif
  } else if constexpr (PW > 0) {
    for (int l = 0; l < PW; ++l) dst[l] = src[l];
  } else {
    std::memcpy(dst, src, len * sizeof(T));
  }
}

// to_patches: true = volume -> patches (patchify), false = patches -> volume (unpatchify).
template <typename T, int PW, bool STREAM>
void run_all(const Geometry& g, const T* src, T* dst, bool to_patches) {
  at::parallel_for(0, num_tasks(g), grain_tasks(g), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (to_patches) {
        runs_patch_order(g, r, [&](int64_t vol, int64_t pat) {
          // The next patch reads the neighbouring bytes of this row; start that miss now (after the
          // strip's last patch this is the next row: a prefetch never faults). Only for large volumes:
          // when the source is in cache the prefetch costs (measured 0.75x at 1-3 MB).
          if constexpr (STREAM) __builtin_prefetch(src + vol + g.pw, 0, 3);
          copy_run<T, PW, STREAM>(dst + pat, src + vol, g.pw);
        });
      } else if constexpr (STREAM) {
        runs_volume_order(g, r, [&](int64_t vol, int64_t pat) {
          // Each patch is a read stream; running 4 lines ahead of it measured steadier than leaving
          // the streams to the hardware prefetchers (which also compete with the other core's).
          __builtin_prefetch(src + pat + 256 / sizeof(T), 0, 3);
          copy_run<T, PW, STREAM>(dst + vol, src + pat, g.pw);
        });
      } else {
        runs_patch_order(g, r, [&](int64_t vol, int64_t pat) {
          copy_run<T, PW, STREAM>(dst + vol, src + pat, g.pw);
        });
      }
    }
#if VOXMIX_STREAMING_STORES
    // Streaming stores are weakly ordered: fence them before this thread reports its chunk done.
    if constexpr (STREAM) _mm_sfence();
#endif
  });
}

template <typename T, int PW>
void dispatch_stream(const Geometry& g, const T* src, T* dst, bool to_patches, bool stream) {
  if constexpr (VOXMIX_STREAMING_STORES && PW * sizeof(T) % 16 == 0) {
    if (stream) return run_all<T, PW, true>(g, src, dst, to_patches);
  }
  run_all<T, PW, false>(g, src, dst, to_patches);
}

template <typename T>
void dispatch_pw(const Geometry& g, const T* src, T* dst, bool to_patches, bool stream) {
  switch (g.pw) {
    case 4: return dispatch_stream<T, 4>(g, src, dst, to_patches, stream);
    case 8: return dispatch_stream<T, 8>(g, src, dst, to_patches, stream);
    case 16: return dispatch_stream<T, 16>(g, src, dst, to_patches, stream);
    case 32: return dispatch_stream<T, 32>(g, src, dst, to_patches, stream);
    default: return run_all<T, 0, false>(g, src, dst, to_patches);
  }
}

// Copies are by element size only (a patchify moves bits), so every dtype shares these instances.
void copy_all(const Geometry& g, const at::Tensor& src, at::Tensor& dst, bool to_patches) {
  const void* s = src.const_data_ptr();
  void* d = dst.mutable_data_ptr();
  // Every run starts a multiple of pw elements into dst (V and W are multiples of pw), so all runs are
  // 16 B aligned when dst is and a run is whole 16 B vectors (checked per instance above).
  const bool stream = dst.nbytes() >= kStreamBytes && reinterpret_cast<std::uintptr_t>(d) % 16 == 0;
  switch (src.element_size()) {
    case 1:
      return dispatch_pw(g, static_cast<const uint8_t*>(s), static_cast<uint8_t*>(d), to_patches, stream);
    case 2:
      return dispatch_pw(g, static_cast<const uint16_t*>(s), static_cast<uint16_t*>(d), to_patches, stream);
    case 4:
      return dispatch_pw(g, static_cast<const uint32_t*>(s), static_cast<uint32_t*>(d), to_patches, stream);
    case 8:
      return dispatch_pw(g, static_cast<const uint64_t*>(s), static_cast<uint64_t*>(d), to_patches, stream);
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
