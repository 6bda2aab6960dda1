// RoIPool (max) and position-sensitive RoIPool (average): the only copy of the bin geometry,
// shared by roi_pool_cpu.cpp, the CUDA kernels (roi_pool_gpu.h, roi_pool_kernels.cuh) and the CuPy
// backend (NVRTC).
// Reference (the specification): detkernels/reference/roi_pool.py.
//
// Maths (torchvision 0.29.1 CPU kernels), working type T, ss = T(scale), round = C round():
//   sw = round(x1*ss) ... ; roi_w = max(ew - sw + 1, 1)   (ps: max(ew - sw, 1), no +1)
//   bin_h = T(roi_h) / T(PH); hstart = floor(T(ph)*bin_h) + sh; hend = ceil(T(ph+1)*bin_h) + sh
//   clamped to [0, H] (ps: [0, H-1], torchvision's forward region; its backward used [0, H]).
//   roi_pool: max over the bin, row-major, strict '>' from T(-FLT_MAX); argmax = h*W + w or -1.
//   ps_roi_pool: (T(0) + v + ...) / T(area), row-major; empty bins give 0.
// Fixes: batch index outside (-1, N) or NaN reads nothing (docs/SPEC.md §1.3); a NaN rounded
// coordinate empties the RoI; rounded coordinates are clamped to [-2^31, 2^31].
#pragma once
#include "common/host_device.h"
#ifndef __CUDACC_RTC__
#include <cmath>
#endif

namespace detkernels {

// C round(): half away from zero, on a T value (exact: the fraction v - trunc(v) is exact).
template <typename T> DK_HD T c_round(T v) {
  const T t = T(trunc(v));
  const T f = v - t;
  if (f >= T(0.5)) return t + T(1);
  if (f <= T(-0.5)) return t - T(1);
  return t;
}

// Rounded RoI coordinate as an integer; false for NaN.
template <typename T> DK_HD bool roi_pool_coord(T v, int64_t& out) {
  const T r = c_round(v);
  if (r != r) return false;
  const T lim = T(2147483648.0);
  out = static_cast<int64_t>(r < -lim ? -lim : (r > lim ? lim : r));
  return true;
}

template <typename T> struct RoiPoolBox {
  bool ok;  // false: every bin is empty
  int64_t sw, sh;
  T bin_w, bin_h;
};

template <typename T>
DK_HD RoiPoolBox<T> roi_pool_box(const T* roi, T ss, int64_t PH, int64_t PW, bool ps) {
  RoiPoolBox<T> g;
  int64_t sw = 0, sh = 0, ew = 0, eh = 0;
  g.ok = roi_pool_coord(roi[1] * ss, sw) && roi_pool_coord(roi[2] * ss, sh) &&
         roi_pool_coord(roi[3] * ss, ew) && roi_pool_coord(roi[4] * ss, eh);
  const int64_t extra = ps ? 0 : 1;
  const int64_t rw = ew - sw + extra, rh = eh - sh + extra;
  g.sw = sw;
  g.sh = sh;
  g.bin_w = T(rw > 1 ? rw : 1) / T(PW);
  g.bin_h = T(rh > 1 ? rh : 1) / T(PH);
  return g;
}

// [start, end) of bin p along one axis: offset by `s0`, clamped to [0, hi].
template <typename T>
DK_HD void roi_pool_bin(T bin, int64_t p, int64_t s0, int64_t hi, int64_t& start, int64_t& end) {
  int64_t a = static_cast<int64_t>(floor(T(p) * bin)) + s0;
  int64_t b = static_cast<int64_t>(ceil(T(p + 1) * bin)) + s0;
  start = a < 0 ? 0 : (a > hi ? hi : a);
  end = b < 0 ? 0 : (b > hi ? hi : b);
}

// T(-FLT_MAX), the max's starting value (no <cfloat> under NVRTC).
template <typename T> DK_HD T roi_pool_lowest() { return T(-3.40282346638528859812e+38F); }

// Bin (ph, pw) of RoI box g over one input channel plane p (element strides sH, sW; null: the
// RoI reads nothing). roi_pool: max, row-major, strict '>' from T(-FLT_MAX), *arg = h*W + w or
// -1; ps_roi_pool: (T(0) + v + ...) / T(area), *arg untouched. Empty bins give 0 (*arg = -1).
template <typename T>
DK_HD T roi_pool_bin_value(const T* p, int64_t sH, int64_t sW, const RoiPoolBox<T>& g, int64_t ph,
                           int64_t pw, int64_t H, int64_t W, bool ps, int* arg) {
  int64_t hs = 0, he = 0, ws = 0, we = 0;
  roi_pool_bin(g.bin_h, ph, g.sh, ps ? H - 1 : H, hs, he);
  roi_pool_bin(g.bin_w, pw, g.sw, ps ? W - 1 : W, ws, we);
  if (!ps) *arg = -1;
  if (p == nullptr || !g.ok || he <= hs || we <= ws) return T(0);
  if (ps) {
    T s = T(0);
    for (int64_t h = hs; h < he; ++h)
      for (int64_t w = ws; w < we; ++w) s += p[h * sH + w * sW];
    return s / T((he - hs) * (we - ws));
  }
  T m = roi_pool_lowest<T>();
  for (int64_t h = hs; h < he; ++h)
    for (int64_t w = ws; w < we; ++w) {
      const T v = p[h * sH + w * sW];
      if (v > m) {
        m = v;
        *arg = static_cast<int>(h * W + w);
      }
    }
  return m;
}

#ifndef __CUDACC_RTC__
/// @brief RoIPool (ps=false: max, argmax int32) / PSRoIPool (ps=true: mean, channel map int32).
/// @param input [N, C, H, W] through element strides; rois contiguous [K, 5];
///              out and idx contiguous [K, Co, PH, PW]
void roi_pool_forward_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                          int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                          double spatial_scale, int64_t PH, int64_t PW, void* out, int32_t* idx);

/// @brief Backward; grad [K, Co, PH, PW] through strides; argmax (roi_pool) contiguous int32;
/// grad_input contiguous [N, C, H, W], overwritten.
void roi_pool_backward_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                           const void* rois, const int32_t* argmax, int64_t K, double spatial_scale,
                           int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                           void* grad_input);
#endif

}  // namespace detkernels
