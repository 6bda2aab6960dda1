// Soft-NMS: the decay weight and its exponential, the only copy of this maths (soft_nms_cpu.cpp;
// later GPU kernels include it too). Reference: detkernels/reference/soft_nms.py, which fixes the
// algorithm and the float order; the IoU is nms.h's nms_iou (kept box first).
//
//   linear:   w = (double)iou > iou_threshold ? T(1) - iou : T(1)
//   gaussian: w = iou is NaN ? T(1) : dk_exp(-(iou * iou) / T(sigma))
//   decayed score = s * w (one rounding in T)
//
// dk_exp is detkernels' exponential: Cephes exp (double) / expf (float) written with + - * /,
// floor and ldexp only (each exact or correctly rounded in IEEE arithmetic), so that the C++, the
// NumPy reference (reference/soft_nms.py: dk_exp, operation for operation) and the CUDA kernels
// (soft_nms_gpu.h, matrix_nms_gpu.h: the same DK_HD functions)
// agree bit for bit. glibc's exp, NumPy's run-time-dispatched SIMD exp (AVX2 / AVX512F) and CUDA's
// exp differ from each other in the last ulp, so none of them can be the specification. Measured
// against the correctly rounded exp: <= 1 ulp (float), <= 2 ulp (double) (pinned by
// tests/ops/test_soft_nms.py).
// The code must not be contracted into FMAs (the build passes -ffp-contract=off).
#pragma once
#ifndef __CUDACC_RTC__
#include <cmath>
#include <cstring>
#else
// NVRTC (a CuPy build of these headers) has no <cmath>: +inf from its bits (CUDA intrinsic).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#endif

#include "common/host_device.h"
#include "ops/nms/nms.h"

namespace detkernels {

enum SoftNmsMethod : int { kSoftLinear = 0, kSoftGaussian = 1 };

// floor(v) for |v| < 2^31 (exact: the truncation, lowered by 1 when it rounded up), and y * 2^n
// rounded once as ldexp rounds it (2^n built from its bits; below the normal range in two steps:
// the first exact, the second the one rounding). Inline replacements of std::floor/std::ldexp,
// which are library calls without SSE4.1; the results are the same numbers.
template <typename T> DK_HD T dk_floor(T v) {
  const T t = static_cast<T>(static_cast<int32_t>(v));
  return t > v ? t - T(1) : t;
}
DK_HD float dk_pow2(float, int n) {  // 2^n, -126 <= n <= 127
  const uint32_t u = static_cast<uint32_t>(n + 127) << 23;
#ifdef __CUDACC_RTC__
  return __int_as_float(static_cast<int>(u));  // no <cstring> under NVRTC; the same bit cast
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
DK_HD double dk_pow2(double, int n) {  // 2^n, -1022 <= n <= 1023
  const uint64_t u = static_cast<uint64_t>(n + 1023) << 52;
#ifdef __CUDACC_RTC__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
template <typename T> DK_HD T dk_ldexp(T y, int n) {
  constexpr int lo = sizeof(T) == 4 ? -126 : -1022, hi = sizeof(T) == 4 ? 127 : 1023;
  if (n < lo) return (y * dk_pow2(T(), n + 64)) * dk_pow2(T(), -64);
  if (n > hi) return (y * dk_pow2(T(), n - 64)) * dk_pow2(T(), 64);
  return y * dk_pow2(T(), n);
}

template <typename T> struct ExpCoef;
// Each ExpCoef splits exp(x) = y * 2^z: round_arg gives the value whose floor is z, mantissa
// the y of (x, z). Both are written over V, a float (double) or a CPU vector of them whose
// + - * / are lane-wise IEEE operations (soft_nms_cpu.cpp's exp_batch), so that every lane
// computes what eval computes.
template <> struct ExpCoef<float> {
  // Constants as exact float32 hex values (the same numbers as the reference's np.float32 ones).
  template <typename V> static DK_HD V round_arg(V x) { return 0x1.715476p+0f * x + 0.5f; }
  template <typename V> static DK_HD V mantissa(V x, V z) {
    V r = x - z * 0x1.63p-1f;                           // ln2 = C1 + C2, C1 exact
    r = r - z * -0x1.bd0106p-13f;
    const V zz = r * r;
    const V p = (((((0x1.a0d2cep-13f * r + 0x1.6e879cp-10f) * r + 0x1.111210p-7f) * r +
                   0x1.555382p-5f) * r + 0x1.555554p-3f) * r + 0x1p-1f);
    return ((p * zz) + r) + 1.0f;
  }
  static DK_HD float eval(float x) {
    if (x != x) return x;
    if (x < -0x1.9d1da0p+6f) return 0.0f;               // below ~ -103.28: underflows to 0
    if (x > 0x1.62e430p+6f) return INFINITY;            // above ~ 88.72: overflows
    const float z = dk_floor(round_arg(x));             // n = round(x / ln2)
    return dk_ldexp(mantissa(x, z), static_cast<int>(z));
  }
};
template <> struct ExpCoef<double> {
  template <typename V> static DK_HD V round_arg(V x) { return 1.4426950408889634073599 * x + 0.5; }
  template <typename V> static DK_HD V mantissa(V x, V px) {
    V r = x - px * 6.93145751953125e-1;
    r = r - px * 1.42860682030941723212e-6;
    const V xx = r * r;
    const V p = r * ((1.26177193074810590878e-4 * xx + 3.02994407707441961300e-2) * xx +
                     9.99999999999999999910e-1);
    const V q = ((3.00198505138664455042e-6 * xx + 2.52448340349684104192e-3) * xx +
                 2.27265548208155028766e-1) * xx + 2.00000000000000000009e0;
    r = p / (q - p);
    return 1.0 + 2.0 * r;
  }
  static DK_HD double eval(double x) {
    if (x != x) return x;
    if (x < -7.451332191019412076235e2) return 0.0;
    if (x > 7.09782712893383996843e2) return INFINITY;
    const double px = dk_floor(round_arg(x));
    return dk_ldexp(mantissa(x, px), static_cast<int>(px));
  }
};

/// exp(x) in T, bit for bit as reference/soft_nms.py's dk_exp. dk_exp(+-0) == 1 exactly.
template <typename T> DK_HD T dk_exp(T x) { return ExpCoef<T>::eval(x); }

/// The Gaussian's exponent -(iou^2) / sigma (V: T or a CPU vector of T, as ExpCoef).
template <typename V, typename T> DK_HD V soft_gaussian_arg(V iou, T sigma) {
  return -(iou * iou) / sigma;
}

/// The decay weight of a remaining box whose IoU with the picked box is `iou` (T). `thr` is the
/// IoU threshold (linear only; compared in double), `sigma` already rounded to T (gaussian only).
/// A NaN IoU never decays (as it never suppresses in nms). Weight 1 is exact for IoU +-0.
template <typename T> DK_HD T soft_nms_weight(T iou, int method, double thr, T sigma) {
  if (method == kSoftLinear) return static_cast<double>(iou) > thr ? T(1) - iou : T(1);
  if (iou != iou) return T(1);
  return dk_exp(soft_gaussian_arg(iou, sigma));
}

/// The rank order of the soft/DIoU/Matrix NMS drivers: score_before (NaN first, -0 == +0), then
/// the lower index. True when (score sa, index a) ranks before (sb, b). A strict total order on
/// distinct indices, so the GPU's block-wide argmax under it is the same in any reduction order.
template <typename T> DK_HD bool ranks_before(T sa, int64_t a, T sb, int64_t b) {
  if (score_before(sa, sb)) return true;
  if (score_before(sb, sa)) return false;
  return a < b;
}

#ifndef __CUDACC_RTC__

/// @brief Soft-NMS on the CPU (reference: detkernels/reference/soft_nms.py), exact per class when
/// `classes` is given (boxes of different classes never decay each other; the kept boxes of all
/// classes are then ordered by decayed score, NaN first, ties by ascending index).
/// @param dtype      kFloat32 or kFloat64 (boxes [n, 4], scores [n], contiguous)
/// @param classes    int64 [n] class ids, or nullptr for one class
/// @param method     a SoftNmsMethod
/// @param max_output at most this many kept (< 0: no limit)
/// @param keep       int64 [n] output: kept indices in pick order
/// @param out_scores T [n] output: their decayed scores
/// @return the number of kept boxes
int64_t soft_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                     int64_t n, double iou_threshold, double sigma, int method,
                     double score_threshold, int64_t max_output, int64_t* keep, void* out_scores);

/// @brief soft_nms_cpu per image of a batch, fixed-size outputs (reference/soft_nms.py,
/// multi_image_soft_nms): boxes [B, N, 4], scores [B, N], classes int64 [B, N] or nullptr; image b's
/// first counts[b] kept (pick order, at most max_output) fill out_idx[b] (box index in the image,
/// then -1) and out_scores[b] (decayed score, then 0).
void soft_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t B, int64_t N, double iou_threshold, double sigma, int method,
                        double score_threshold, int64_t max_output, int64_t* out_idx,
                        void* out_scores, int64_t* counts);

/// @brief dk_exp over an array (tests: the C++ exponential against the reference's).
void soft_nms_exp_cpu(int dtype, const void* x, void* y, int64_t n);
#endif

}  // namespace detkernels
