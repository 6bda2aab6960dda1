// Rotated RoIAlign (detectron2 ROIAlignRotated / mmcv roi_align_rotated): the only copy of its
// geometry and of its sin/cos, shared by roi_align_rotated's CPU loops (roi_align_cpu.cpp) and
// CUDA kernels. The bilinear tap rule and weights are roi_align.h's (roi_axis_tap, roi_weights,
// roi_bilinear). Reference (the specification): detkernels/reference/roi_align_rotated.py.
//
// Maths, working type T, ss = T(scale), rois [K, 6] = (batch, cx, cy, w, h, angle in degrees):
//   off = aligned ? T(0.5) : T(0);  cx' = cx*ss - off;  cy' = cy*ss - off
//   roi_w = w*ss; roi_h = h*ss;  not aligned: roi_w = std::max(roi_w, T(1)) (roi_h likewise)
//   theta = clockwise ? -angle : angle;  (s, c) = T(sincos_deg(double(theta)))   (see below)
//   bin_w = roi_w / T(PW);  gw = sampling_ratio > 0 ? sampling_ratio : grid(ceil(bin_w)), capped
//   at kRoiRotatedMaxGrid = 256 per axis (65536 samples per bin; the sample points of a rotated bin
//   do not factor into two axes, so roi_align's 65536-per-axis cap would allow 4e9 per bin)
//   yy = roi_axis_coord(-roi_h / T(2), bin_h, ph, iy, gh);  xx likewise with -roi_w / T(2)
//   y = (yy*c - xx*s) + cy';  x = (yy*s + xx*c) + cx'
//   taps: roi_axis_tap(y, H), roi_axis_tap(x, W); the sample is in range iff both are.
//   out = (((+0 + sample) + sample) + ...) / T(gh*gw), in-range samples only, iy outer, ix inner.
// Backward: (grad*w_k)/T(gh*gw) summed into grad_input in the order (roi, ph, pw, iy, ix, tap).
//
// sincos_deg: sin and cos of an angle in degrees from IEEE double operations only (+ - * and
// fmod, which is exact), so the same bits on every compiler, device and NumPy:
//   r = fmod(|a|, 360)  (exact);  r >= 180: r -= 180 (exact, Sterbenz), negate both;
//   r >= 90: r -= 90 (exact), (s, c) <- (c, -s);  r > 45: t = 90 - r (exact), swap s and c
//   x = t * kDegToRad (one rounding), Taylor polynomials to x^17 (sin) and x^16 (cos) for
//   0 <= x <= pi/4 evaluated by Horner, no FMA; a < 0: s = -s.
// Exact at multiples of 90 degrees (0, +-1); |error| vs the true value <= 2e-16, about 1 ulp (tested in
// tests/ops/test_roi_align_rotated.py against libm on the reduced angle).
#pragma once
#include "ops/roi_align/roi_align.h"

namespace detkernels {

constexpr int64_t kRoiRotatedMaxGrid = 256;

struct SinCosDeg {
  double s, c;
};

DK_HD SinCosDeg sincos_deg(double a) {
  const bool neg = a < 0.0;
  double r = fmod(neg ? -a : a, 360.0);  // NaN, inf -> NaN: every comparison below is false
  bool half = false, quarter = false, mirror = false;
  if (r >= 180.0) {
    r = r - 180.0;
    half = true;
  }
  if (r >= 90.0) {
    r = r - 90.0;
    quarter = true;
  }
  if (r > 45.0) {
    r = 90.0 - r;
    mirror = true;
  }
  const double x = r * 0.017453292519943295;  // pi / 180
  const double x2 = x * x;
  double ps = 2.8114572543455206e-15;           // 1/17!
  ps = ps * x2 + -7.647163731819816e-13;        // -1/15!
  ps = ps * x2 + 1.6059043836821613e-10;        // 1/13!
  ps = ps * x2 + -2.505210838544172e-08;        // -1/11!
  ps = ps * x2 + 2.7557319223985893e-06;        // 1/9!
  ps = ps * x2 + -0.0001984126984126984;        // -1/7!
  ps = ps * x2 + 0.008333333333333333;          // 1/5!
  ps = ps * x2 + -0.16666666666666666;          // -1/3!
  const double st = x + (x * x2) * ps;
  double pc = 4.779477332387385e-14;            // 1/16!
  pc = pc * x2 + -1.1470745597729725e-11;       // -1/14!
  pc = pc * x2 + 2.08767569878681e-09;          // 1/12!
  pc = pc * x2 + -2.755731922398589e-07;        // -1/10!
  pc = pc * x2 + 2.48015873015873e-05;          // 1/8!
  pc = pc * x2 + -0.001388888888888889;         // -1/6!
  pc = pc * x2 + 0.041666666666666664;          // 1/4!
  pc = pc * x2 + -0.5;                          // -1/2!
  const double ct = 1.0 + x2 * pc;
  SinCosDeg o;
  o.s = mirror ? ct : st;
  o.c = mirror ? st : ct;
  if (quarter) {
    const double t = o.s;
    o.s = o.c;
    o.c = -t;
  }
  if (half) {
    o.s = -o.s;
    o.c = -o.c;
  }
  if (neg) o.s = -o.s;
  return o;
}

// Samples per axis and bin: roi_grid with the rotated cap.
template <typename T> DK_HD int64_t roi_rotated_grid(T bin_size, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T v = T(ceil(bin_size));
  if (!(v > T(0))) return 0;
  return v > T(kRoiRotatedMaxGrid) ? kRoiRotatedMaxGrid : static_cast<int64_t>(v);
}

// One rotated RoI's sampling geometry.
template <typename T> struct RoiRotatedBox {
  int64_t batch;  // -1: reads nothing
  T cx, cy, x0, y0, bin_w, bin_h, cos_t, sin_t;  // x0, y0: -roi_w/2, -roi_h/2 (centre frame)
  int64_t gh, gw;
  T count;  // T(gh * gw)
};

template <typename T>
DK_HD RoiRotatedBox<T> roi_rotated_box(const T* roi, T ss, int64_t PH, int64_t PW,
                                       int64_t sampling_ratio, bool aligned, bool clockwise,
                                       int64_t n_images) {
  RoiRotatedBox<T> g;
  const T off = aligned ? T(0.5) : T(0);
  g.cx = roi[1] * ss - off;
  g.cy = roi[2] * ss - off;
  T roi_w = roi[3] * ss, roi_h = roi[4] * ss;
  if (!aligned) {
    roi_w = std_max(roi_w, T(1));
    roi_h = std_max(roi_h, T(1));
  }
  const T theta = clockwise ? -roi[5] : roi[5];
  const SinCosDeg sc = sincos_deg(static_cast<double>(theta));
  g.cos_t = static_cast<T>(sc.c);
  g.sin_t = static_cast<T>(sc.s);
  g.x0 = -roi_w / T(2);
  g.y0 = -roi_h / T(2);
  g.bin_w = roi_w / T(PW);
  g.bin_h = roi_h / T(PH);
  g.gh = roi_rotated_grid(g.bin_h, sampling_ratio);
  g.gw = roi_rotated_grid(g.bin_w, sampling_ratio);
  g.count = T(g.gh * g.gw);
  g.batch = roi_batch_index(roi[0], n_images);
  return g;
}

// Sample (iy, ix) of bin (ph, pw): its taps along y and x; in range iff y.valid && x.valid.
template <typename T>
DK_HD bool roi_rotated_sample(const RoiRotatedBox<T>& g, int64_t ph, int64_t pw, int64_t iy,
                              int64_t ix, int64_t H, int64_t W, AxisSample<T>& y, AxisSample<T>& x) {
  const T yy = roi_axis_coord(g.y0, g.bin_h, ph, iy, g.gh);
  const T xx = roi_axis_coord(g.x0, g.bin_w, pw, ix, g.gw);
  y = roi_axis_tap((yy * g.cos_t - xx * g.sin_t) + g.cy, H);
  x = roi_axis_tap((yy * g.sin_t + xx * g.cos_t) + g.cx, W);
  return y.valid && x.valid;
}

#ifndef __CUDACC_RTC__
/// @brief Rotated RoIAlign forward on the CPU.
/// @param dtype   kFloat32 or kFloat64 (input, rois and output)
/// @param input   [N, C, H, W] read through element strides `in_strides`
/// @param rois    contiguous [K, 6] (batch, cx, cy, w, h, angle in degrees)
/// @param out     contiguous [K, C, PH, PW]
void roi_align_rotated_forward_cpu(int dtype, const void* input, const Strides4& in_strides,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double spatial_scale, int64_t PH, int64_t PW,
                                   int64_t sampling_ratio, bool aligned, bool clockwise, void* out);

/// @brief Rotated RoIAlign backward on the CPU, summing in the documented order.
/// @param grad        [K, C, PH, PW] read through element strides `grad_strides`
/// @param grad_input  contiguous [N, C, H, W], overwritten
void roi_align_rotated_backward_cpu(int dtype, const void* grad, const Strides4& grad_strides,
                                    const void* rois, int64_t K, double spatial_scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sampling_ratio, bool aligned, bool clockwise,
                                    void* grad_input);
#endif

}  // namespace detkernels
