// The IoU family (box_iou, generalized/distance/complete box IoU): the only copy of the formulas,
// shared by box_iou_cpu.cpp, box_iou_cuda.cu and the CuPy backend.
//
// Maths (torchvision 0.29.1 ops/boxes.py, operation order kept exactly; reference:
// detkernels/reference/box_iou.py). For boxes a, b in working type T:
//   area  = (x2 - x1) * (y2 - y1)                      (xywh, cxcywh: w * h)
//   w     = clamp(min(a.x2, b.x2) - max(a.x1, b.x1), 0)  h likewise; max/min propagate NaN
//   inter = w * h ; union = (area_a + area_b) - inter ; iou = inter / union
//   giou  = iou - (area_c - union) / area_c             c = smallest enclosing box
//   diou  = iou - cd2 / ((wc*wc + hc*hc) + eps)          cd2 = squared distance of the centres
//   ciou  = diou - alpha * v,  v = T(4/pi^2) * (atan(wa/ha) - atan(wb/hb))^2,
//           alpha = v / (((1 - iou) + v) + eps)
// No epsilon in iou/giou: identical zero-area boxes give 0/0 = NaN, as in torchvision.
// Integer boxes (int32/int64; IoU and GIoU only, as the reference's _int_pairwise): every + - *
// in the integer type, wrapping on overflow like torch's integer ops, and each division
// float32(numerator) / float32(denominator); the result is float32. cxcywh integer boxes: as in
// torch, `w / 2` is a true division, so corners, extents and inter are float32 (the integers
// converted first) while the areas and area_a + area_b stay integer, converted for `- inter`.
// DIoU/CIoU never see integers: their working dtype is float32 (detkernels/_checks.py).
// atan is detkernels' own (dk_atan below), built from + - * / only, so every backend and the
// NumPy reference agree bit for bit (libm/SLEEF/CUDA atan differ in the last ulp).
#pragma once
#include "common/host_device.h"

namespace detkernels {

enum BoxFmt : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };
enum IouKind : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

template <typename T> struct AtanCoef;
// Cephes atanf: range reduction to |x| <= tan(pi/8), degree-4 odd polynomial.
template <> struct AtanCoef<float> {
  // Constants as exact float32 hex values, so C++, CUDA, NumPy and torch round them identically.
  static DK_HD float eval(float x) {
    float y0 = 0.0f;
    if (x > 0x1.3504f4p+1f) {  // tan(3pi/8)
      y0 = 0x1.921fb6p+0f;     // pi/2
      x = -(1.0f / x);
    } else if (x > 0x1.a8279ap-2f) {  // tan(pi/8)
      y0 = 0x1.921fb6p-1f;            // pi/4
      x = (x - 1.0f) / (x + 1.0f);
    }
    const float z = x * x;
    const float p = (((0x1.49e1a2p-4f * z - 0x1.1c370ap-3f) * z + 0x1.9924bep-3f) * z -
                     0x1.555454p-2f);
    return y0 + ((p * z) * x + x);
  }
};
// Cephes atan (double): range reduction at tan(3pi/8) and 0.66, rational P(z)/Q(z).
template <> struct AtanCoef<double> {
  static DK_HD double eval(double x) {
    double y0 = 0.0, more = 0.0;
    if (x > 2.41421356237309504880) {
      y0 = 1.57079632679489661923;
      more = 6.123233995736765886130e-17;
      x = -(1.0 / x);
    } else if (x > 0.66) {
      y0 = 0.78539816339744830962;
      more = 0.5 * 6.123233995736765886130e-17;
      x = (x - 1.0) / (x + 1.0);
    }
    const double z = x * x;
    const double p = (((-8.750608600031904122785e-1 * z - 1.615753718733365076637e1) * z -
                       7.500855792314704667340e1) * z - 1.228866684490136173410e2) * z -
                     6.485021904942025371773e1;
    const double q = ((((z + 2.485846490142306297962e1) * z + 1.650270098316988542046e2) * z +
                       4.328810604912902668951e2) * z + 4.853903996359136964868e2) * z +
                     1.945506571482613964425e2;
    return y0 + ((x * ((z * p) / q) + x) + more);
  }
};

// Odd extension; NaN -> NaN, +-inf -> +-pi/2.
template <typename T> DK_HD T dk_atan(T x) {
  const bool neg = x < T(0);
  const T r = AtanCoef<T>::eval(neg ? -x : x);
  return neg ? -r : r;
}

// Per box dtype T: the output type and, for integers, the unsigned type that wraps.
template <typename T> struct IouTypes {  // float, double: computed and returned in T
  using out = T;
  static constexpr bool kInt = false;
};
template <> struct IouTypes<int32_t> {
  using out = float;
  using wrap = uint32_t;
  static constexpr bool kInt = true;
};
template <> struct IouTypes<int64_t> {
  using out = float;
  using wrap = uint64_t;
  static constexpr bool kInt = true;
};
template <typename T> using iou_out_t = typename IouTypes<T>::out;

// a + b, a - b, a * b; for integers two's-complement wrap-around as torch computes it. Signed
// overflow is undefined in C++, so the operation runs in the unsigned type of the same width
// (defined modulo 2^n) and converts back (modular on g++, nvcc and NVRTC; defined in C++20).
template <typename T> DK_HD T wrap_add(T a, T b) {
  if constexpr (IouTypes<T>::kInt) {
    using U = typename IouTypes<T>::wrap;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}
template <typename T> DK_HD T wrap_sub(T a, T b) {
  if constexpr (IouTypes<T>::kInt) {
    using U = typename IouTypes<T>::wrap;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) - static_cast<U>(b)));
  } else {
    return a - b;
  }
}
template <typename T> DK_HD T wrap_mul(T a, T b) {
  if constexpr (IouTypes<T>::kInt) {
    using U = typename IouTypes<T>::wrap;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
  } else {
    return a * b;
  }
}

template <typename T> DK_HD T box_area(const T* b, int fmt) {
  return fmt == kXYXY ? wrap_mul(wrap_sub(b[2], b[0]), wrap_sub(b[3], b[1])) : wrap_mul(b[2], b[3]);
}

// Corners as torchvision's box_iou derives them from each format (no prior conversion to xyxy).
template <typename T> DK_HD void box_corners(const T* b, int fmt, T& x1, T& y1, T& x2, T& y2) {
  if (fmt == kXYXY) {
    x1 = b[0]; y1 = b[1]; x2 = b[2]; y2 = b[3];
  } else if (fmt == kXYWH) {
    x1 = b[0]; y1 = b[1]; x2 = wrap_add(b[0], b[2]); y2 = wrap_add(b[1], b[3]);
  } else {  // floating point only (integer cxcywh boxes: pair_iou's own branch)
    const T hw = b[2] / T(2), hh = b[3] / T(2);
    x1 = b[0] - hw; y1 = b[1] - hh; x2 = b[0] + hw; y2 = b[1] + hh;
  }
}

// DIoU's distance term cd2 / ((wc*wc + hc*hc) + eps) of xyxy boxes a, b, where wc, hc are the
// enclosing box's clamped width and height (pair_iou computes them; diou_penalty_of below for
// callers that do not). The one copy, shared by distance/complete_box_iou and diou_nms.
template <typename T> DK_HD T diou_penalty(const T* a, const T* b, T wc, T hc, T eps) {
  const T diag2 = (wc * wc + hc * hc) + eps;
  const T dx = (a[0] + a[2]) / T(2) - (b[0] + b[2]) / T(2);
  const T dy = (a[1] + a[3]) / T(2) - (b[1] + b[3]) / T(2);
  return (dx * dx + dy * dy) / diag2;
}
template <typename T> DK_HD T diou_penalty_of(const T* a, const T* b, T eps) {
  const T wc = clamp_min0(nan_max(a[2], b[2]) - nan_min(a[0], b[0]));
  const T hc = clamp_min0(nan_max(a[3], b[3]) - nan_min(a[1], b[1]));
  return diou_penalty(a, b, wc, hc, eps);
}

// One entry of the pairwise matrix. `area_a`/`area_b` come from box_area (computed once per box).
// GIoU/DIoU/CIoU are defined on xyxy boxes only (as in torchvision). Integer T: kIoU/kGIoU only
// (the entry points never pass others); the result is float32.
template <typename T>
DK_HD iou_out_t<T> pair_iou(const T* a, const T* b, T area_a, T area_b, int fmt, int kind,
                            iou_out_t<T> eps) {
  using O = iou_out_t<T>;  // O == T for floating point: the conversions below are no-ops
  if constexpr (IouTypes<T>::kInt) {
    if (fmt == kCXCYWH) {  // kIoU only (GIoU takes xyxy)
      const float fa[4] = {float(a[0]), float(a[1]), float(a[2]), float(a[3])};
      const float fb[4] = {float(b[0]), float(b[1]), float(b[2]), float(b[3])};
      float ax1, ay1, ax2, ay2, bx1, by1, bx2, by2;
      box_corners(fa, fmt, ax1, ay1, ax2, ay2);
      box_corners(fb, fmt, bx1, by1, bx2, by2);
      const float w = clamp_min0(nan_min(ax2, bx2) - nan_max(ax1, bx1));
      const float h = clamp_min0(nan_min(ay2, by2) - nan_max(ay1, by1));
      const float inter = w * h;
      return inter / (static_cast<float>(wrap_add(area_a, area_b)) - inter);
    }
  }
  T ax1, ay1, ax2, ay2, bx1, by1, bx2, by2;
  box_corners(a, fmt, ax1, ay1, ax2, ay2);
  box_corners(b, fmt, bx1, by1, bx2, by2);
  const T w = clamp_min0(wrap_sub(nan_min(ax2, bx2), nan_max(ax1, bx1)));
  const T h = clamp_min0(wrap_sub(nan_min(ay2, by2), nan_max(ay1, by1)));
  const T inter = wrap_mul(w, h);
  const T uni = wrap_sub(wrap_add(area_a, area_b), inter);
  const O iou = static_cast<O>(inter) / static_cast<O>(uni);
  if (kind == kIoU) return iou;
  const T wc = clamp_min0(wrap_sub(nan_max(ax2, bx2), nan_min(ax1, bx1)));
  const T hc = clamp_min0(wrap_sub(nan_max(ay2, by2), nan_min(ay1, by1)));
  if (kind == kGIoU) {
    const T area_c = wrap_mul(wc, hc);
    return iou - static_cast<O>(wrap_sub(area_c, uni)) / static_cast<O>(area_c);
  }
  if constexpr (IouTypes<T>::kInt) {
    return O(0) / O(0);  // not reached (see above): NaN rather than a plausible number
  } else {
    const T diou = iou - diou_penalty(a, b, wc, hc, eps);
    if (kind == kDIoU) return diou;
    const T d = dk_atan((a[2] - a[0]) / (a[3] - a[1])) - dk_atan((b[2] - b[0]) / (b[3] - b[1]));
    // 4 / pi**2 as Python computes it in double, then rounded to T (torch's scalar * tensor).
    const T v = T(0x1.9f02f6222c720p-2) * (d * d);
    const T alpha = v / (((T(1) - iou) + v) + eps);
    return diou - alpha * v;
  }
}

#ifndef __CUDACC_RTC__
/// @brief out[b, i, j] = metric(boxes1[b, i], boxes2[b, j]) for contiguous boxes1 [B, N, 4],
/// boxes2 [B, M, 4], out [B, N, M]; dtype (of the boxes) kFloat32 or kFloat64 (out: the same), or
/// kInt32 or kInt64 with kind kIoU/kGIoU (out: float32).
void box_iou_cpu(int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M,
                 const void* boxes1, const void* boxes2, void* out);
#ifdef DETKERNELS_WITH_CUDA
/// @brief As box_iou_cpu, on device pointers of device `device`, enqueued on `stream`
/// (a cudaStream_t of that device).
void box_iou_cuda(int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M,
                  const void* boxes1, const void* boxes2, void* out, int device, void* stream);
#endif
#endif

}  // namespace detkernels
