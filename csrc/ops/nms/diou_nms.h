// DIoU-NMS (Zheng et al., AAAI 2020): greedy NMS whose suppression measure is
//   diou = iou - R^beta,  R = cd2 / (wc*wc + hc*hc)   (box_iou.h's diou_penalty_of, eps = 0)
// with iou = nms.h's nms_iou (kept box first, std::max/min: nms's contract) and the candidate
// suppressed iff (double)diou > iou_threshold (strictly; a NaN never suppresses). Reference:
// detkernels/reference/diou_nms.py.
//
// R^beta: beta == 1 is R itself (no rounding); otherwise dk_pow(R, beta) = dk_exp(beta *
// dk_log(R)) -- detkernels' own log and soft_nms.h's exp, so every backend gives the same bits
// (libm pow differs between platforms in the last ulp). dk_log: x = m * 2^e with m in
// [sqrt(1/2), sqrt(2)) (frexp, exact), z = (m - 1) / (m + 1), log m = 2z + 2z * z^2 * P(z^2) with
// P the atanh series 1/3 + z^2/5 + ... + z^20/23 (|z| <= 0.1716: the next term is < 2^-58),
// log x = log m + e * T(ln 2).
//
// Also compiled by nvcc (the CUDA DIoU-NMS: the bitmask NMS engine of nms_bitmask.h with
// DiouNmsSuppress as its predicate, diou_nms_kernels.cuh) and NVRTC (the CuPy backend): no <cmath>
// here, frexp is dk_frexp (bit operations, exact as std::frexp).
#pragma once
#include "common/host_device.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms.h"

namespace detkernels {

/// frexp of a finite x > 0 (all dk_log passes it), as std::frexp: x = m * 2^e, m in [0.5, 1),
/// exactly, from the bits (subnormals scaled up by 2^25 / 2^54 first, exactly); soft_nms.h's
/// dk_pow2 for the bit casts' other direction.
DK_HD float dk_frexp(float x, int* e) {
#ifdef __CUDACC_RTC__
  uint32_t u = static_cast<uint32_t>(__float_as_int(x));
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
#endif
  int sub = 0;
  if ((u >> 23) == 0) {  // subnormal: 2^25 x is normal
    x = x * dk_pow2(0.0f, 25);
    sub = 25;
#ifdef __CUDACC_RTC__
    u = static_cast<uint32_t>(__float_as_int(x));
#else
    std::memcpy(&u, &x, sizeof u);
#endif
  }
  *e = static_cast<int>(u >> 23) - 126 - sub;
  u = (u & 0x007FFFFFu) | (uint32_t(126) << 23);
#ifdef __CUDACC_RTC__
  return __int_as_float(static_cast<int>(u));
#else
  float m;
  std::memcpy(&m, &u, sizeof m);
  return m;
#endif
}
DK_HD double dk_frexp(double x, int* e) {
#ifdef __CUDACC_RTC__
  uint64_t u = static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
#endif
  int sub = 0;
  if ((u >> 52) == 0) {  // subnormal: 2^54 x is normal
    x = x * dk_pow2(0.0, 54);
    sub = 54;
#ifdef __CUDACC_RTC__
    u = static_cast<uint64_t>(__double_as_longlong(x));
#else
    std::memcpy(&u, &x, sizeof u);
#endif
  }
  *e = static_cast<int>(u >> 52) - 1022 - sub;
  u = (u & 0x000FFFFFFFFFFFFFull) | (uint64_t(1022) << 52);
#ifdef __CUDACC_RTC__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double m;
  std::memcpy(&m, &u, sizeof m);
  return m;
#endif
}

/// log(x) in T, bit for bit as reference/diou_nms.py's dk_log. 0 -> -inf, < 0 -> NaN, 1 -> 0.
template <typename T> DK_HD T dk_log(T x) {
  if (x != x || x < T(0)) return x != x ? x : T(0) / T(0);
  if (x == T(0)) return -INFINITY;
  if (x == T(INFINITY)) return x;
  int e = 0;
  T m = dk_frexp(x, &e);  // m in [0.5, 1)
  if (m < T(0.70710678118654752440)) {
    m = m + m;
    e = e - 1;
  }
  const T z = (m - T(1)) / (m + T(1));
  const T z2 = z * z;
  T p = T(1.0 / 23);
  p = p * z2 + T(1.0 / 21);
  p = p * z2 + T(1.0 / 19);
  p = p * z2 + T(1.0 / 17);
  p = p * z2 + T(1.0 / 15);
  p = p * z2 + T(1.0 / 13);
  p = p * z2 + T(1.0 / 11);
  p = p * z2 + T(1.0 / 9);
  p = p * z2 + T(1.0 / 7);
  p = p * z2 + T(1.0 / 5);
  p = p * z2 + T(1.0 / 3);
  const T tz = z + z;
  return (tz + (tz * z2) * p) + static_cast<T>(e) * T(0.69314718055994530942);
}

/// r^beta for r >= 0 (or NaN), beta > 0: r itself for beta == 1, else dk_exp(beta * dk_log(r)).
template <typename T> DK_HD T dk_pow(T r, T beta) {
  if (beta == T(1)) return r;
  if (r == T(0)) return T(0);
  return dk_exp(beta * dk_log(r));
}

/// DIoU-NMS's measure of candidate b against kept box a (xyxy; areas from nms_area).
template <typename T>
DK_HD T diou_nms_measure(const T* a, T area_a, const T* b, T area_b, T beta) {
  const T iou = nms_iou(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], area_b);
  return iou - dk_pow(diou_penalty_of(a, b, T(0)), beta);
}

/// The bitmask engine's predicate for DIoU-NMS (nms_bitmask.h NmsIouSuppress's counterpart), and
/// the CPU driver's: kept box a suppresses candidate b iff diou_nms_measure(a, b) > thr, with thr
/// = nms_threshold<T>(iou_threshold), i.e. iff (double)diou > iou_threshold (a NaN never does).
template <typename T> struct DiouNmsSuppress {
  using Boxes = NmsAxisBoxes<T>;  // the columns it reads (nms.h)
  T thr;   // nms_threshold<T>(iou_threshold)
  T beta;  // the penalty exponent rounded to T
  DK_HD bool operator()(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2,
                        T barea) const {
    const T a[4] = {ax1, ay1, ax2, ay2};
    const T b[4] = {bx1, by1, bx2, by2};
    return diou_nms_measure(a, aarea, b, barea, beta) > thr;
  }
};

#ifndef __CUDACC_RTC__
/// @brief DIoU-NMS on the CPU (nms's contract: kept indices by descending score, NaN first, ties
/// by ascending index; exact per class when `classes` is given).
/// @param dtype kFloat32 or kFloat64 (boxes [n, 4], scores [n], contiguous)
/// @param beta  the penalty exponent (> 0), rounded to T
/// @return the number of kept boxes, written to keep
int64_t diou_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                     int64_t n, double iou_threshold, double beta, int64_t* keep);

/// @brief diou_nms_cpu per image of a batch, fixed-size outputs (reference/diou_nms.py,
/// multi_image_diou_nms): boxes [B, N, 4], scores [B, N], classes int64 [B, N] or nullptr; image
/// b's first counts[b] kept (descending score, at most max_output) fill out_idx[b] (box index in
/// the image, then -1). Images run in parallel on the CPU thread pool.
void diou_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t B, int64_t N, double iou_threshold, double beta, int64_t max_output,
                        int64_t* out_idx, int64_t* counts);

/// @brief DIoU-NMS by the CUDA algorithm (nms_bitmask.h with DiouNmsSuppress), run sequentially
/// on the CPU: nms_multi_emulate_cpu's arguments (multi-image, per class, score filter, fixed-size
/// outputs) plus beta. For testing the GPU logic without a GPU.
void diou_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                const int64_t* classes, int64_t B, int64_t N, int64_t C,
                                double iou_threshold, double beta, bool has_score_thr,
                                double score_thr, int64_t max_output, int64_t* out_idx,
                                int64_t* out_cls, int64_t* counts, int64_t tile_rows,
                                int64_t mask_cap_bytes, int scan_threads);

#ifdef DETKERNELS_WITH_CUDA
/// @brief DIoU-NMS on CUDA: nms_multi_cuda (same arguments, same workspace,
/// nms_multi_cuda_workspace_bytes) with the DIoU predicate and beta; never synchronises.
void diou_nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                         int64_t B, int64_t N, int64_t C, double iou_threshold, double beta,
                         bool has_score_thr, double score_thr, int64_t max_output,
                         int64_t* out_idx, int64_t* out_cls, int64_t* counts, void* workspace,
                         int64_t workspace_bytes, int64_t mask_cap_bytes, int device,
                         void* stream);
#endif

/// @brief dk_log over an array (tests: the C++ logarithm against the reference's).
void diou_nms_log_cpu(int dtype, const void* x, void* y, int64_t n);
#endif

}  // namespace detkernels
