// The GPU RoIPool / PSRoIPool per-item logic, shared by roi_pool_kernels.cuh (one thread per item;
// nvcc and NVRTC) and roi_pool_emulate.cpp (the same steps run sequentially on the CPU, so tests
// check them byte-for-byte against the reference without a GPU). Maths: roi_pool.h only.
//
// Backward, deterministic and atomic-free (each grad_input element summed from +0 in the
// reference's order, SPEC.md):
//  * roi_pool (max): output element i = (n, c, ph, pw) has exactly one target, its argmax in
//    image b = batch(n), channel c: key (b*C + c)*H*W + argmax (none = N*C*H*W for argmax -1,
//    out-of-range argmax or no batch). Slots are the K*C*PH*PW output elements (no count/scan
//    step, no host sync); a stable sort by key puts each target's contributions in (n, ph, pw)
//    order; one item per run sums the grads from +0.
//  * ps_roi_pool (mean): the generic scatter of roi_scatter.h with PsRoiPoolScatter below: RoI n
//    owns one slot per (bin, pixel of the bin), keyed b*H*W + h*W + w, carrying
//    (grad * 1) / T(area) (= grad / T(area) exactly); channel c only receives bin c % (PH*PW).
#pragma once
#include "ops/roi_align/roi_align.h"  // roi_batch_index
#include "common/roi_scatter.h"
#include "ops/roi_pool/roi_pool.h"

namespace detkernels {

// Forward of one output element (n, c, ph, pw); *idx = argmax (roi_pool) or input channel (ps).
template <typename T>
DK_HD T roi_pool_output(const T* in, const int64_t* st, int64_t N, int64_t H, int64_t W,
                        const T* rois, int64_t n, int64_t c, int64_t ph, int64_t pw, T ss,
                        int64_t PH, int64_t PW, bool ps, int* idx) {
  const T* roi = rois + 5 * n;
  const int64_t b = roi_batch_index(roi[0], N);
  const RoiPoolBox<T> g = roi_pool_box(roi, ss, PH, PW, ps);
  const int64_t cin = ps ? (c * PH + ph) * PW + pw : c;
  if (ps) *idx = static_cast<int>(cin);
  const T* p = b < 0 ? nullptr : in + b * st[0] + cin * st[1];
  return roi_pool_bin_value(p, st[2], st[3], g, ph, pw, H, W, ps, idx);
}

// roi_pool backward key of output element i = ((n*C + c)*PH + ph)*PW + pw.
template <typename T>
DK_HD int64_t roi_pool_max_key(const T* rois, const int* argmax, int64_t i, int64_t C, int64_t nb,
                               int64_t N, int64_t HW) {
  const int64_t none = N * C * HW;
  const int64_t n = i / (C * nb), c = (i / nb) % C;
  const int64_t b = roi_batch_index(rois[5 * n], N);
  const int64_t a = argmax[i];
  return (b < 0 || a < 0 || a >= HW) ? none : (b * C + c) * HW + a;
}

// Sum of the grads of the sorted output elements seq[p..end) (one run), from +0 in order.
template <typename T>
DK_HD T roi_pool_max_run_sum(const int64_t* seq, int64_t p, int64_t end, const T* grad,
                             const int64_t* gs, int64_t C, int64_t PH, int64_t PW) {
  const int64_t nb = PH * PW;
  T acc = T(0);
  for (int64_t q = p; q < end; ++q) {
    const int64_t i = seq[q], k = i % nb, c = (i / nb) % C, n = i / (C * nb);
    acc += grad[n * gs[0] + c * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
  }
  return acc;
}

// [start, end) of bin p of a PSRoIPool RoI along one axis (the forward's region, [0, size-1]).
template <typename T>
DK_HD int64_t ps_roi_pool_len(T bin, int64_t p, int64_t s0, int64_t size, int64_t& start) {
  int64_t end = 0;
  roi_pool_bin(bin, p, s0, size - 1, start, end);
  return end > start ? end - start : 0;
}

// roi_scatter.h policy of the PSRoIPool backward: slots of RoI n in the order (ph, h, pw, w) over
// the bins' pixels; divisor div[n*PH*PW + bin] = T(area of the bin).
template <typename T> struct PsRoiPoolScatter {
  using Scalar = T;
  static constexpr bool kDivPerBin = true;
  RoiGeom<T> a;
  DK_HD RoiPoolBox<T> box(int64_t n) const {
    return roi_pool_box(a.rois + 5 * n, a.ss, a.PH, a.PW, true);
  }
  DK_HD int64_t slots(int64_t n, T* div) const {
    const RoiPoolBox<T> g = box(n);
    if (roi_batch_index(a.rois[5 * n], a.N) < 0 || !g.ok) return 0;
    int64_t s = 0, th = 0, tw = 0;
    for (int64_t pw = 0; pw < a.PW; ++pw) tw += ps_roi_pool_len(g.bin_w, pw, g.sw, a.W, s);
    for (int64_t ph = 0; ph < a.PH; ++ph) {
      const int64_t lh = ps_roi_pool_len(g.bin_h, ph, g.sh, a.H, s);
      th += lh;
      for (int64_t pw = 0; pw < a.PW; ++pw)
        div[(n * a.PH + ph) * a.PW + pw] = T(lh * ps_roi_pool_len(g.bin_w, pw, g.sw, a.W, s));
    }
    return th * tw;
  }
  // Only called for l < slots(n): the RoI has a batch and the slot a pixel.
  DK_HD RoiContrib<T> contrib(int64_t n, int64_t l) const {
    const RoiPoolBox<T> g = box(n);
    int64_t s = 0, tw = 0;
    for (int64_t pw = 0; pw < a.PW; ++pw) tw += ps_roi_pool_len(g.bin_w, pw, g.sw, a.W, s);
    int64_t ph = 0, hs = 0;
    for (;; ++ph) {
      const int64_t rows = ps_roi_pool_len(g.bin_h, ph, g.sh, a.H, hs) * tw;
      if (l < rows || ph == a.PH - 1) break;
      l -= rows;
    }
    const int64_t h = hs + l / tw;
    int64_t j = l % tw, pw = 0, ws = 0;
    for (;; ++pw) {
      const int64_t lw = ps_roi_pool_len(g.bin_w, pw, g.sw, a.W, ws);
      if (j < lw || pw == a.PW - 1) break;
      j -= lw;
    }
    RoiContrib<T> r;
    r.key = (roi_batch_index(a.rois[5 * n], a.N) * a.H + h) * a.W + ws + j;
    r.bin = ph * a.PW + pw;
    r.w = T(1);
    return r;
  }
};

#ifndef __CUDACC_RTC__
/// @brief Forward through roi_pool_output (the CUDA forward's per-thread function), sequentially
/// on the CPU; arguments as roi_pool_forward_cpu. For testing the GPU logic.
void roi_pool_forward_emulate_cpu(int dtype, bool ps, const void* input, const Strides4& in_strides,
                                  int64_t N, int64_t C, int64_t H, int64_t W, const void* rois,
                                  int64_t K, double spatial_scale, int64_t PH, int64_t PW, void* out,
                                  int32_t* idx);

/// @brief The CUDA backward's steps run sequentially on the CPU (std::stable_sort for the radix
/// sort); arguments as roi_pool_backward_cpu. For testing the GPU logic.
void roi_pool_backward_emulate_cpu(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                                   const void* rois, const int32_t* argmax, int64_t K,
                                   double spatial_scale, int64_t PH, int64_t PW, int64_t N,
                                   int64_t C, int64_t H, int64_t W, void* grad_input);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Forward on device `device`, enqueued on `stream` (no host sync); arguments as
/// roi_pool_forward_cpu (out and idx device buffers).
void roi_pool_forward_cuda(int dtype, bool ps, const void* input, const Strides4& in_strides,
                           int64_t N, int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                           double spatial_scale, int64_t PH, int64_t PW, void* out, int32_t* idx,
                           int device, void* stream);

/// @brief Bytes of the `pre` buffer of ps_roi_pool_backward_cuda_prepare.
int64_t ps_roi_pool_backward_cuda_pre_bytes(int64_t K, int64_t PH, int64_t PW);

/// @brief PSRoIPool backward step 1: slot offsets and bin areas into `pre` (device); synchronises
/// `stream` once and returns the slot count M (sum over RoIs of their bins' areas).
int64_t ps_roi_pool_backward_cuda_prepare(int dtype, const void* rois, int64_t K,
                                          double spatial_scale, int64_t PH, int64_t PW, int64_t N,
                                          int64_t H, int64_t W, void* pre, int device, void* stream);

/// @brief Slot count of the backward: K*C*PH*PW for roi_pool (no sync needed), M from prepare
/// for ps_roi_pool; and the device workspace (bytes) it needs.
int64_t roi_pool_backward_cuda_workspace_bytes(bool ps, int64_t M, int64_t N, int64_t C, int64_t H,
                                               int64_t W, int device);

/// @brief Backward; grad [K, Co, PH, PW] through strides; argmax int32 (roi_pool; ignored for
/// ps); pre/M from the prepare step (ps only); grad_input contiguous [N, C, H, W], overwritten.
void roi_pool_backward_cuda(int dtype, bool ps, const void* grad, const Strides4& grad_strides,
                            const void* rois, const int32_t* argmax, int64_t K,
                            double spatial_scale, int64_t PH, int64_t PW, int64_t N, int64_t C,
                            int64_t H, int64_t W, const void* pre, int64_t M, void* workspace,
                            int64_t workspace_bytes, void* grad_input, int device, void* stream);
#endif
#endif

}  // namespace detkernels
