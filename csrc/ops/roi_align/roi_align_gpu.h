// The GPU RoIAlign backward's per-element logic, shared by roi_align_cuda.cu (one thread per item)
// and roi_align_emulate.cpp (the same steps run sequentially on the CPU, so tests can check them
// byte-for-byte against the reference without a GPU). Geometry and weights come from roi_align.h.
//
// Deterministic backward without atomics (reference docstring, `_scatter_in_order`):
//  1. every RoI n owns PH*PW*gh*gw*4 contribution slots, in the order (ph, pw, iy, ix, tap); an
//     exclusive scan of the counts gives each slot a global sequence number = the summation order;
//  2. each slot's target is keyed b*H*W + y*W + x (kRoiNoTarget for out-of-range samples);
//  3. a stable sort of (key, sequence number) by key groups each target's contributions in order;
//  4. one thread per (run of equal keys, channel) sums (grad*w)/count over the run from +0.
#pragma once
#include "ops/roi_align/roi_align.h"

namespace detkernels {

// Contribution slots of one RoI (0 when it reads nothing).
template <typename T> DK_HD int64_t roi_contrib_count(const RoiAlignBox<T>& g, int64_t PH, int64_t PW) {
  if (g.batch < 0 || g.gh == 0 || g.gw == 0) return 0;
  return PH * PW * g.gh * g.gw * 4;
}

// One contribution slot: target key (or `none` for an out-of-range sample), bin ph*PW+pw, weight.
template <typename T> struct RoiContrib {
  int64_t key;
  int64_t bin;
  T w;
};

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

// The RoI owning global slot s: the last n with offsets[n] <= s (offsets[0] = 0, non-decreasing).
DK_HD int64_t roi_find(const int64_t* offsets, int64_t K, int64_t s) {
  int64_t lo = 0, hi = K;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= s) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Sum of a run of sorted slots [p, end) for input channel c, from +0 in slot order.
// bins[q] = n*PH*PW + bin of slot q; count[n] = T(gh*gw) of RoI n; grad read through strides gs.
template <typename T>
DK_HD T roi_run_sum(const int64_t* bins, const T* w, const T* count, int64_t p, int64_t end,
                    const T* grad, const int64_t* gs, int64_t c, bool ps, int64_t PH, int64_t PW) {
  const int64_t nb = PH * PW;
  const int64_t co = ps ? c / nb : c;
  T acc = T(0);
  for (int64_t q = p; q < end; ++q) {
    const int64_t n = bins[q] / nb, k = bins[q] % nb;
    if (ps && k != c % nb) continue;  // ps: channel c only receives bin c % nb
    const T gv = grad[n * gs[0] + co * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
    acc += (gv * w[q]) / count[n];
  }
  return acc;
}

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
void roi_align_backward_emulate_cpu(int dtype, bool ps, const void* grad, const int64_t* grad_strides,
                                    const void* rois, int64_t K, double spatial_scale, int64_t PH,
                                    int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int64_t sampling_ratio, bool aligned, void* grad_input);

/// @brief Forward on the CPU through roi_align_output (the CUDA forward's per-thread function).
void roi_align_forward_emulate_cpu(int dtype, bool ps, const void* input, const int64_t* in_strides,
                                   int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                   int64_t K, double spatial_scale, int64_t PH, int64_t PW,
                                   int64_t sampling_ratio, bool aligned, void* out);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Forward on device `device`, enqueued on `stream`; out contiguous [K, Co, PH, PW].
void roi_align_forward_cuda(int dtype, bool ps, const void* input, const int64_t* in_strides,
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
void roi_align_backward_cuda(int dtype, bool ps, const void* grad, const int64_t* grad_strides,
                             const void* rois, int64_t K, double spatial_scale, int64_t PH,
                             int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t sampling_ratio, bool aligned, const void* pre, int64_t M,
                             void* workspace, int64_t workspace_bytes, void* grad_input, int device,
                             void* stream);
#endif
#endif

}  // namespace detkernels
