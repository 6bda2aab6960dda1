// The GPU rotated RoIAlign's per-item logic, shared by roi_align_rotated_kernels.cuh (one thread
// per item) and roi_align_rotated_emulate.cpp (the same steps run sequentially on the CPU, so
// tests check them byte-for-byte against the reference without a GPU). Geometry, sin/cos and taps
// come from roi_align_rotated.h. The backward is roi_scatter.h's deterministic scatter with the
// policy below: RoI n owns PH*PW*gh*gw*4 slots in the order (ph, pw, iy, ix, tap) (the reference's
// summation order), keyed b*H*W + y*W + x (none for out-of-range samples), adding (grad*w)/T(gh*gw).
#pragma once
#include "common/roi_scatter.h"
#include "ops/roi_align/roi_align_rotated.h"

namespace detkernels {

// Contribution slots of one rotated RoI (0 when it reads nothing).
template <typename T>
DK_HD int64_t roi_rotated_contrib_count(const RoiRotatedBox<T>& g, int64_t PH, int64_t PW) {
  if (g.batch < 0 || g.gh == 0 || g.gw == 0) return 0;
  return PH * PW * g.gh * g.gw * 4;
}

template <typename T>
DK_HD RoiContrib<T> roi_rotated_contrib(const RoiRotatedBox<T>& g, int64_t l, int64_t PW, int64_t H,
                                        int64_t W, int64_t none) {
  const int64_t tap = l % 4, s = l / 4;
  const int64_t ix = s % g.gw, iy = (s / g.gw) % g.gh, bin = s / (g.gw * g.gh);
  RoiContrib<T> r;
  r.bin = bin;
  AxisSample<T> y, x;
  if (!roi_rotated_sample(g, bin / PW, bin % PW, iy, ix, H, W, y, x)) {
    r.key = none;
    r.w = T(0);
    return r;
  }
  T w[4];
  roi_weights(y, x, w);
  r.w = w[tap];
  const int64_t yy = (tap < 2) ? y.lo : y.hi, xx = (tap % 2 == 0) ? x.lo : x.hi;
  r.key = (g.batch * H + yy) * W + xx;
  return r;
}

// roi_scatter.h policy of the rotated backward (rois [K, 6]); CW: clockwise angles. div[n] = T(gh*gw).
template <typename T, bool CW> struct RoiAlignRotatedScatter {
  using Scalar = T;
  static constexpr bool kDivPerBin = false;
  RoiGeom<T> a;  // a.ps is false
  DK_HD RoiRotatedBox<T> box(int64_t n) const {
    return roi_rotated_box(a.rois + 6 * n, a.ss, a.PH, a.PW, a.sr, a.aligned, CW, a.N);
  }
  DK_HD int64_t slots(int64_t n, T* div) const {
    const RoiRotatedBox<T> g = box(n);
    div[n] = g.count;
    return roi_rotated_contrib_count(g, a.PH, a.PW);
  }
  DK_HD RoiContrib<T> contrib(int64_t n, int64_t l) const {
    return roi_rotated_contrib(box(n), l, a.PW, a.H, a.W, a.N * a.H * a.W);
  }
};

// Forward of one output element (n, c, ph, pw): in-range samples, iy outer, ix inner, from +0.
template <typename T>
DK_HD T roi_rotated_output(const T* in, const int64_t* st, int64_t N, int64_t H, int64_t W,
                           const T* rois, int64_t n, int64_t c, int64_t ph, int64_t pw, T ss,
                           int64_t PH, int64_t PW, int64_t sr, bool aligned, bool clockwise) {
  const RoiRotatedBox<T> g = roi_rotated_box(rois + 6 * n, ss, PH, PW, sr, aligned, clockwise, N);
  if (g.batch < 0 || g.gh == 0 || g.gw == 0) return T(0);
  const T* p = in + g.batch * st[0] + c * st[1];
  T acc = T(0);
  for (int64_t iy = 0; iy < g.gh; ++iy)
    for (int64_t ix = 0; ix < g.gw; ++ix) {
      AxisSample<T> y, x;
      if (!roi_rotated_sample(g, ph, pw, iy, ix, H, W, y, x)) continue;
      T w[4];
      roi_weights(y, x, w);
      acc += roi_bilinear(w, p[y.lo * st[2] + x.lo * st[3]], p[y.lo * st[2] + x.hi * st[3]],
                          p[y.hi * st[2] + x.lo * st[3]], p[y.hi * st[2] + x.hi * st[3]]);
    }
  return acc / g.count;
}

#ifndef __CUDACC_RTC__
/// @brief The GPU backward's steps run sequentially on the CPU; grad_input contiguous, overwritten.
void roi_align_rotated_backward_emulate_cpu(int dtype, const void* grad, const Strides4& grad_strides,
                                            const void* rois, int64_t K, double spatial_scale,
                                            int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                            int64_t W, int64_t sampling_ratio, bool aligned,
                                            bool clockwise, void* grad_input);

/// @brief Forward on the CPU through roi_rotated_output (the CUDA forward's per-thread function).
void roi_align_rotated_forward_emulate_cpu(int dtype, const void* input, const Strides4& in_strides,
                                           int64_t N, int64_t C, int64_t H, int64_t W,
                                           const void* rois, int64_t K, double spatial_scale,
                                           int64_t PH, int64_t PW, int64_t sampling_ratio,
                                           bool aligned, bool clockwise, void* out);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Forward on device `device`, enqueued on `stream`; out contiguous [K, C, PH, PW].
void roi_align_rotated_forward_cuda(int dtype, const void* input, const Strides4& in_strides,
                                    int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                    int64_t K, double spatial_scale, int64_t PH, int64_t PW,
                                    int64_t sampling_ratio, bool aligned, bool clockwise, void* out,
                                    int device, void* stream);

/// @brief Backward step 1 (as roi_align_backward_cuda_prepare): offsets and counts into `pre`
/// (16*(K+1) bytes); synchronises `stream`, returns the slot count M.
int64_t roi_align_rotated_backward_cuda_prepare(int dtype, const void* rois, int64_t K,
                                                double spatial_scale, int64_t PH, int64_t PW,
                                                int64_t N, int64_t sampling_ratio, bool aligned,
                                                bool clockwise, void* pre, int device, void* stream);

/// @brief Backward steps 2-4; workspace of roi_align_backward_cuda_workspace_bytes(M, N, H, W).
void roi_align_rotated_backward_cuda(int dtype, const void* grad, const Strides4& grad_strides,
                                     const void* rois, int64_t K, double spatial_scale, int64_t PH,
                                     int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                     int64_t sampling_ratio, bool aligned, bool clockwise,
                                     const void* pre, int64_t M, void* workspace,
                                     int64_t workspace_bytes, void* grad_input, int device,
                                     void* stream);
#endif
#endif

}  // namespace detkernels
