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
#pragma once
#include <cmath>

#include "common/host_device.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms.h"

namespace detkernels {

/// log(x) in T, bit for bit as reference/diou_nms.py's dk_log. 0 -> -inf, < 0 -> NaN, 1 -> 0.
template <typename T> DK_HD T dk_log(T x) {
  if (x != x || x < T(0)) return x != x ? x : T(0) / T(0);
  if (x == T(0)) return -INFINITY;
  if (x == T(INFINITY)) return x;
  int e = 0;
  T m = std::frexp(x, &e);  // m in [0.5, 1)
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

/// @brief dk_log over an array (tests: the C++ logarithm against the reference's).
void diou_nms_log_cpu(int dtype, const void* x, void* y, int64_t n);
#endif

}  // namespace detkernels
