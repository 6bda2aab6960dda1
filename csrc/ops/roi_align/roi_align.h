// RoIAlign and position-sensitive RoIAlign: the only copy of the geometry and the bilinear sample,
// shared by roi_align_cpu.cpp, the CUDA kernels (roi_align_gpu.h, roi_align_kernels.cuh) and the
// CuPy backend (NVRTC).
// Reference (the specification): detkernels/reference/roi_align.py.
//
// Maths (torchvision 0.29.1 CPU kernel, operation order kept), working type T, ss = T(scale):
//   off = aligned||ps ? T(0.5) : T(0);  x1s = x1*ss - off ... ; roi_w = x2s - x1s (roi_h likewise)
//   roi_align, not aligned: roi_w = std::max(roi_w, T(1))        (NaN stays NaN)
//   bin_w = roi_w / T(PW); gw = sampling_ratio > 0 ? sampling_ratio : grid(ceil(bin_w))
//   y(ph, iy) = (y1s + T(ph)*bin_h) + (T(float(iy) + 0.5f) * bin_h) / T(gh)
// A sample is in range iff -1 <= y <= H and -1 <= x <= W (NaN never is); out-of-range samples are
// skipped, i.e. contribute exactly 0 (torchvision CPU adds 0*v[0,0], NaN for non-finite v[0,0]).
//   sample = ((w1*v[yl,xl] + w2*v[yl,xh]) + w3*v[yh,xl]) + w4*v[yh,xh];  out = acc / T(gh*gw)
// Fixes of docs/SPEC.md §1.3: a batch index outside (-1, N) or NaN reads nothing (output 0, no
// gradient); zero samples give 0; adaptive grids are capped at kMaxGrid per axis.
// Backward: contributions (grad*w_k)/T(gh*gw) are summed into grad_input in the order
// (roi, ph, pw, iy, ix, tap), taps (yl,xl), (yl,xh), (yh,xl), (yh,xh).
#pragma once
#include "common/host_device.h"
#ifndef __CUDACC_RTC__
#include <cmath>
#endif

namespace detkernels {

constexpr int64_t kRoiMaxGrid = int64_t(1) << 16;

// trunc(v) when -1 < v < n (NaN fails both tests), else -1: that RoI reads nothing. n > 0 is
// tested first: with no images, v in (-1, 0) would truncate to image 0 of an empty batch.
template <typename T> DK_HD int64_t roi_batch_index(T v, int64_t n) {
  return (n > 0 && v > T(-1) && v < T(n)) ? static_cast<int64_t>(v) : int64_t(-1);
}

// Samples per axis and bin from the bin size (adaptive sampling): 0 for NaN or <= 0.
template <typename T> DK_HD int64_t roi_grid(T bin_size, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T v = T(ceil(bin_size));  // exact: ceil of a T is a T
  if (!(v > T(0))) return 0;
  return v > T(kRoiMaxGrid) ? kRoiMaxGrid : static_cast<int64_t>(v);
}

// One RoI's sampling geometry.
template <typename T> struct RoiAlignBox {
  int64_t batch;  // -1: reads nothing
  T x0, y0, bin_w, bin_h;
  int64_t gh, gw;
  T count;  // T(gh * gw)
};

template <typename T>
DK_HD RoiAlignBox<T> roi_align_box(const T* roi, T ss, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                   bool aligned, bool ps, int64_t n_images) {
  RoiAlignBox<T> g;
  const T off = (aligned || ps) ? T(0.5) : T(0);
  const T x1s = roi[1] * ss - off, y1s = roi[2] * ss - off;
  const T x2s = roi[3] * ss - off, y2s = roi[4] * ss - off;
  T roi_w = x2s - x1s, roi_h = y2s - y1s;
  if (!ps && !aligned) {
    roi_w = std_max(roi_w, T(1));
    roi_h = std_max(roi_h, T(1));
  }
  g.x0 = x1s;
  g.y0 = y1s;
  g.bin_w = roi_w / T(PW);
  g.bin_h = roi_h / T(PH);
  g.gh = roi_grid(g.bin_h, sampling_ratio);
  g.gw = roi_grid(g.bin_w, sampling_ratio);
  g.count = T(g.gh * g.gw);
  g.batch = roi_batch_index(roi[0], n_images);
  return g;
}

// One sample along one axis: in range or not, the two taps and their weights.
template <typename T> struct AxisSample {
  bool valid;
  int64_t lo, hi;
  T l, h;
};

// Coordinate of sample i of bin p along one axis (the reference's order of operations).
template <typename T> DK_HD T roi_axis_coord(T start, T bin, int64_t p, int64_t i, int64_t grid) {
  return (start + T(p) * bin) + (T(static_cast<float>(i) + 0.5f) * bin) / T(grid);
}

// The taps of coordinate c on an axis of `size` pixels: in range iff -1 <= c <= size (NaN never
// is), then clamped (c <= 0 -> 0; lo >= size-1 -> lo = hi = size-1, c = lo). Shared by roi_align
// and roi_align_rotated (roi_align_rotated.h): the one bilinear tap rule.
template <typename T> DK_HD AxisSample<T> roi_axis_tap(T c, int64_t size) {
  AxisSample<T> s;
  s.valid = size > 0 && c >= T(-1) && c <= T(size);
  if (!s.valid) {
    s.lo = s.hi = 0;
    s.l = T(0);
    s.h = T(1);
    return s;
  }
  if (c <= T(0)) c = T(0);
  s.lo = static_cast<int64_t>(c);
  if (s.lo >= size - 1) {
    s.lo = s.hi = size - 1;
    c = T(s.lo);
  } else {
    s.hi = s.lo + 1;
  }
  s.l = c - T(s.lo);
  s.h = T(1) - s.l;
  return s;
}

template <typename T>
DK_HD AxisSample<T> roi_axis_sample(T start, T bin, int64_t p, int64_t i, int64_t grid, int64_t size) {
  return roi_axis_tap(roi_axis_coord(start, bin, p, i, grid), size);
}

// Bilinear weights of an in-range sample, in tap order (yl,xl), (yl,xh), (yh,xl), (yh,xh).
template <typename T> DK_HD void roi_weights(const AxisSample<T>& y, const AxisSample<T>& x, T* w) {
  w[0] = y.h * x.h;
  w[1] = y.h * x.l;
  w[2] = y.l * x.h;
  w[3] = y.l * x.l;
}

template <typename T> DK_HD T roi_bilinear(const T* w, T v1, T v2, T v3, T v4) {
  return ((w[0] * v1 + w[1] * v2) + w[2] * v3) + w[3] * v4;
}

#ifndef __CUDACC_RTC__
/// @brief RoIAlign / PSRoIAlign forward on the CPU.
/// @param dtype   kFloat32 or kFloat64 (input, rois and output)
/// @param input   [N, C, H, W] read through element strides `in_strides` (NCHW, NHWC, any)
/// @param rois    contiguous [K, 5]
/// @param out     contiguous [K, Co, PH, PW]; Co = C (roi_align) or C/(PH*PW) (ps)
void roi_align_forward_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                           int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                           double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                           bool aligned, void* out);

/// @brief RoIAlign / PSRoIAlign backward on the CPU, summing in the documented order.
/// @param grad        [K, Co, PH, PW] read through element strides `grad_strides`
/// @param grad_input  contiguous [N, C, H, W], overwritten
void roi_align_backward_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                            const void* rois, int64_t K, double spatial_scale, int64_t PH,
                            int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t sampling_ratio, bool aligned, void* grad_input);
#endif

}  // namespace detkernels
