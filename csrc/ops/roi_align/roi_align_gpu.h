// The GPU RoIAlign's per-item logic, shared by roi_align_kernels.cuh (one thread per item; nvcc
// and NVRTC) and roi_align_emulate.cpp (the same steps run sequentially on the CPU, so tests can
// check them byte-for-byte against the reference without a GPU). Geometry and weights come from
// roi_align.h. The backward is the deterministic scatter of roi_scatter.h with the policy below:
// every RoI n owns PH*PW*gh*gw*4 slots, in the order (ph, pw, iy, ix, tap) (the reference's
// summation order); each slot's target is keyed b*H*W + y*W + x (none for out-of-range samples)
// and adds (grad * w) / T(gh*gw).
#pragma once
#include "ops/roi_align/roi_align.h"
#include "common/roi_scatter.h"

namespace detkernels {

// Contribution slots of one RoI (0 when it reads nothing).
template <typename T> DK_HD int64_t roi_contrib_count(const RoiAlignBox<T>& g, int64_t PH, int64_t PW) {
  if (g.batch < 0 || g.gh == 0 || g.gw == 0) return 0;
  return PH * PW * g.gh * g.gw * 4;
}

template <typename T>
DK_HD RoiContrib<T> roi_contrib(const RoiAlignBox<T>& g, int64_t l, int64_t PW,
                                int64_t H, int64_t W, int64_t none) {
  const int64_t tap = l % 4, s = l / 4;
  const int64_t ix = s % g.gw, iy = (s / g.gw) % g.gh, bin = s / (g.gw * g.gh);
  const int64_t ph = bin / PW, pw = bin % PW;
  RoiContrib<T> r;
  r.bin = bin;
  const AxisSample<T> y = roi_axis_sample(g.y0, g.bin_h, ph, iy, g.gh, H);
  const AxisSample<T> x = roi_axis_sample(g.x0, g.bin_w, pw, ix, g.gw, W);
  if (!y.valid || !x.valid) {
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

// roi_scatter.h policy of the RoIAlign / PSRoIAlign backward; divisor div[n] = T(gh*gw).
template <typename T> struct RoiAlignScatter {
  using Scalar = T;
  static constexpr bool kDivPerBin = false;
  RoiGeom<T> a;
  DK_HD RoiAlignBox<T> box(int64_t n) const {
    return roi_align_box(a.rois + 5 * n, a.ss, a.PH, a.PW, a.sr, a.aligned, a.ps, a.N);
  }
  DK_HD int64_t slots(int64_t n, T* div) const {
    const RoiAlignBox<T> g = box(n);
    div[n] = g.count;
    return roi_contrib_count(g, a.PH, a.PW);
  }
  DK_HD RoiContrib<T> contrib(int64_t n, int64_t l) const {
    return roi_contrib(box(n), l, a.PW, a.H, a.W, a.N * a.H * a.W);
  }
};

// Forward of one output element (n, c, ph, pw): in-range samples, iy outer, ix inner, from +0.
template <typename T>
DK_HD T roi_align_output(const T* in, const int64_t* st, int64_t N, int64_t H, int64_t W,
                         const T* rois, int64_t n, int64_t c, int64_t ph, int64_t pw, T ss,
                         int64_t PH, int64_t PW, int64_t sr, bool aligned, bool ps) {
  const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
  if (g.batch < 0 || g.gh == 0 || g.gw == 0) return T(0);
  const int64_t ci = ps ? (c * PH + ph) * PW + pw : c;
  const T* p = in + g.batch * st[0] + ci * st[1];
  T acc = T(0);
  for (int64_t iy = 0; iy < g.gh; ++iy) {
    const AxisSample<T> y = roi_axis_sample(g.y0, g.bin_h, ph, iy, g.gh, H);
    if (!y.valid) continue;
    for (int64_t ix = 0; ix < g.gw; ++ix) {
      const AxisSample<T> x = roi_axis_sample(g.x0, g.bin_w, pw, ix, g.gw, W);
      if (!x.valid) continue;
      T w[4];
      roi_weights(y, x, w);
      acc += roi_bilinear(w, p[y.lo * st[2] + x.lo * st[3]], p[y.lo * st[2] + x.hi * st[3]],
                          p[y.hi * st[2] + x.lo * st[3]], p[y.hi * st[2] + x.hi * st[3]]);
    }
  }
  return acc / g.count;
}

#ifndef __CUDACC_RTC__
/// @brief Runs the GPU backward's steps sequentially on the CPU (std::stable_sort for the radix
/// sort); grad_input contiguous [N, C, H, W], overwritten. For testing the GPU logic.
void roi_align_backward_emulate_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                                    const void* rois, int64_t K, double spatial_scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sampling_ratio, bool aligned, void* grad_input);

/// @brief Forward on the CPU through roi_align_output (the CUDA forward's per-thread function).
void roi_align_forward_emulate_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double spatial_scale, int64_t PH, int64_t PW,
                                   int64_t sampling_ratio, bool aligned, void* out);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Forward on device `device`, enqueued on `stream`; out contiguous [K, Co, PH, PW].
void roi_align_forward_cuda(int dtype, bool ps, const void* input, const Strides4& in_strides,
                            int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                            double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                            bool aligned, void* out, int device, void* stream);

/// @brief Backward step 1: per-RoI slot offsets (int64 [K+1]) and counts (T [K]) into `pre`
/// (16*(K+1) bytes, device); synchronises `stream` and returns the total slot count M.
int64_t roi_align_backward_cuda_prepare(int dtype, bool ps, const void* rois, int64_t K,
                                        double spatial_scale, int64_t PH, int64_t PW, int64_t N,
                                        int64_t sampling_ratio, bool aligned, void* pre, int device,
                                        void* stream);

/// @brief Device workspace (bytes) the backward needs for M slots.
int64_t roi_align_backward_cuda_workspace_bytes(int64_t M, int64_t N, int64_t H, int64_t W,
                                                int device);

/// @brief Backward steps 2-4; grad_input contiguous [N, C, H, W], overwritten.
void roi_align_backward_cuda(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                             const void* rois, int64_t K, double spatial_scale, int64_t PH,
                             int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t sampling_ratio, bool aligned, const void* pre, int64_t M,
                             void* workspace, int64_t workspace_bytes, void* grad_input, int device,
                             void* stream);
#endif
#endif

}  // namespace detkernels
