// Host-side launches of the deterministic RoI backward scatter (roi_scatter_kernels.cuh) for the
// nvcc build: roi_align_cuda.cu and roi_pool_cuda.cu run the same steps through these templates.
// The stable sort is CUB's radix sort (stable by construction) -- the only part the CuPy backend
// does differently (cupy.argsort, also stable).
#pragma once
#include <cub/device/device_radix_sort.cuh>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "common/roi_scatter_kernels.cuh"

namespace detkernels {

constexpr int kRoiThreads = 256;

// Blocks for n items; the kernels are grid-stride loops, so the cap is only a cap.
inline unsigned roi_blocks(int64_t n) {
  const int64_t b = ceil_div<int64_t>(n, kRoiThreads);
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);
}

// Radix-sort bits for keys in [0, none].
inline int roi_key_bits(int64_t none) {
  int b = 1;
  while (b < 63 && (int64_t(1) << b) <= none) ++b;
  return b;
}

inline size_t roi_align256(size_t v) { return (v + 255) / 256 * 256; }

inline size_t roi_sort_temp_bytes(int64_t M, int64_t none) {
  size_t bytes = 0;
  DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), M, 0,
      roi_key_bits(none)));
  return bytes;
}

// Workspace of a sort of M (key, seq) pairs: key_in, key_out, seq_in, seq_out (int64 [M] each),
// then CUB's scratch.
inline int64_t roi_sort_workspace_bytes(int64_t M, int64_t none) {
  if (M == 0) return 0;
  return static_cast<int64_t>(roi_align256(32 * M) + roi_sort_temp_bytes(M, none));
}

struct RoiSortBuffers {
  int64_t *key_in, *key_out, *seq_in, *seq_out;
};

inline RoiSortBuffers roi_sort_buffers(void* ws, int64_t M) {
  int64_t* p = static_cast<int64_t*>(ws);
  return {p, p + M, p + 2 * M, p + 3 * M};
}

// Stable sort of (key_in, seq_in) by key into (key_out, seq_out).
inline void roi_sort_pairs(void* ws, int64_t ws_bytes, int64_t M, int64_t none, cudaStream_t s,
                           const char* what) {
  const RoiSortBuffers b = roi_sort_buffers(ws, M);
  size_t tmp_bytes = roi_sort_temp_bytes(M, none);
  if (static_cast<int64_t>(roi_align256(32 * M) + tmp_bytes) > ws_bytes)
    throw std::invalid_argument(std::string(what) + " (CUDA): workspace of " +
                                std::to_string(ws_bytes) + " bytes is too small");
  char* tmp = static_cast<char*>(ws) + roi_align256(32 * M);
  DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp, tmp_bytes, b.key_in, b.key_out, b.seq_in,
                                                b.seq_out, M, 0, roi_key_bits(none), s));
}

// Divisors follow the offsets in `pre`: off int64 [K+1], then div T [K] or [K*PH*PW].
inline int64_t roi_scatter_pre_bytes(int64_t K, int64_t PH, int64_t PW, bool div_per_bin) {
  return 8 * (K + 1) + 8 * K * (div_per_bin ? PH * PW : 1);
}

#define DK_ROI_GEOM_ARGS(g) \
  g.rois, g.ss, g.K, g.PH, g.PW, g.N, g.H, g.W, g.sr, int(g.aligned), int(g.ps)

// Step 1 into `pre` (roi_scatter_pre_bytes): counts and scan, then ONE host synchronisation to
// read the total slot count M, which sizes the caller's workspace. Returns M.
template <class P>
int64_t roi_scatter_prepare(const RoiGeom<typename P::Scalar>& g, void* pre, cudaStream_t s,
                            const char* what) {
  using T = typename P::Scalar;
  if (g.K == 0) return 0;
  int64_t* off = static_cast<int64_t*>(pre);
  T* div = reinterpret_cast<T*>(off + g.K + 1);
  roi_scatter_count<P><<<roi_blocks(g.K), kRoiThreads, 0, s>>>(DK_ROI_GEOM_ARGS(g), off, div);
  DK_CUDA_CHECK_LAUNCH(what);
  roi_scatter_scan<int64_t><<<1, 1, 0, s>>>(off, g.K);
  DK_CUDA_CHECK_LAUNCH(what);
  int64_t M = 0;
  DK_CUDA_CHECK(cudaMemcpyAsync(&M, off + g.K, sizeof(int64_t), cudaMemcpyDeviceToHost, s));
  DK_CUDA_CHECK(cudaStreamSynchronize(s));
  return M;
}

// Steps 2-5; grad [K, Co, PH, PW] through element strides gst; gi contiguous [N, C, H, W],
// overwritten; ws of roi_sort_workspace_bytes(M, N*H*W) bytes.
template <class P>
void roi_scatter_backward(const RoiGeom<typename P::Scalar>& g, const typename P::Scalar* grad,
                          const int64_t* gst, int64_t C, const void* pre, int64_t M, void* ws,
                          int64_t ws_bytes, typename P::Scalar* gi, cudaStream_t s,
                          const char* what) {
  using T = typename P::Scalar;
  const int64_t HW = g.H * g.W, none = g.N * HW;
  if (g.N * C * HW > 0) DK_CUDA_CHECK(cudaMemsetAsync(gi, 0, sizeof(T) * g.N * C * HW, s));
  if (M == 0 || C == 0) return;
  const int64_t* off = static_cast<const int64_t*>(pre);
  const T* div = reinterpret_cast<const T*>(off + g.K + 1);
  const RoiSortBuffers b = roi_sort_buffers(ws, M);
  roi_scatter_key<P><<<roi_blocks(M), kRoiThreads, 0, s>>>(DK_ROI_GEOM_ARGS(g), off, M, b.key_in,
                                                           b.seq_in);
  DK_CUDA_CHECK_LAUNCH(what);
  roi_sort_pairs(ws, ws_bytes, M, none, s, what);
  // key_in / seq_in are free again: bins and weights of the sorted slots.
  int64_t* bins = b.key_in;
  T* w = reinterpret_cast<T*>(b.seq_in);
  roi_scatter_decode<P><<<roi_blocks(M), kRoiThreads, 0, s>>>(DK_ROI_GEOM_ARGS(g), off, M,
                                                              b.seq_out, bins, w);
  DK_CUDA_CHECK_LAUNCH(what);
  roi_scatter_reduce<T><<<roi_blocks(M * C), kRoiThreads, 0, s>>>(
      b.key_out, bins, w, div, int(P::kDivPerBin), M, grad, gst[0], gst[1], gst[2], gst[3], C,
      HW, none, int(g.ps), g.PH, g.PW, gi);
  DK_CUDA_CHECK_LAUNCH(what);
}

}  // namespace detkernels
