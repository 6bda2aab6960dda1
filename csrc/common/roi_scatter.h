// Deterministic, atomic-free scatter-add of RoI backward passes: the per-item steps shared by the
// CUDA kernels (roi_scatter_kernels.cuh: nvcc and NVRTC), the CuPy backend and the CPU emulation
// (roi_scatter_emulate.h). Used by roi_align / ps_roi_align and ps_roi_pool.
//
// Each grad_input element must be the sum, from +0 in the reference's order, of its contributions
// (reference docstrings, `_scatter_in_order`). A policy P describes the contributions:
//   P::slots(n, div)   number of contribution slots of RoI n; writes the divisor(s) its slots use
//   P::contrib(n, l)   slot l of RoI n: target key b*H*W + y*W + x (or none = N*H*W), the bin
//                      ph*PW + pw whose grad it carries, and a weight
// Steps: 1. counts + exclusive scan = offsets: slot l of RoI n gets sequence number off[n] + l,
//           and sequence order is the summation order;
//        2. key of every slot; 3. stable sort of (key, sequence number) by key;
//        4. decode the sorted slots (bin, weight); 5. one item per (run of equal keys, channel)
//           sums (grad * w) / div over its run, in sequence order, from +0 (roi_run_sum).
#pragma once
#include "common/host_device.h"

namespace detkernels {

// The scalar arguments every RoI scatter step takes (kernels receive them one by one: NVRTC
// launches from CuPy pass scalars, not structs).
template <typename T> struct RoiGeom {
  const T* rois;  // contiguous [K, 5]
  T ss;           // T(spatial_scale)
  int64_t K, PH, PW, N, H, W, sr;
  bool aligned, ps;
};

// One contribution slot: target key (or none), bin ph*PW + pw of its RoI, weight.
template <typename T> struct RoiContrib {
  int64_t key;
  int64_t bin;
  T w;
};

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

// Whether sorted slot p starts a run of equal keys that has a target (none sorts last).
DK_HD bool roi_run_start(const int64_t* skey, int64_t p, int64_t none) {
  return skey[p] != none && (p == 0 || skey[p - 1] != skey[p]);
}

DK_HD int64_t roi_run_end(const int64_t* skey, int64_t p, int64_t M) {
  int64_t end = p + 1;
  while (end < M && skey[end] == skey[p]) ++end;
  return end;
}

// Sum of a run of sorted slots [p, end) for input channel c, from +0 in slot order.
// bins[q] = n*PH*PW + bin of slot q; the divisor is div[n] (div_per_bin false) or div[bins[q]];
// grad [K, Co, PH, PW] read through element strides gs. ps: channel c only receives bin c % nb.
template <typename T>
DK_HD T roi_run_sum(const int64_t* bins, const T* w, const T* div, bool div_per_bin, int64_t p,
                    int64_t end, const T* grad, const int64_t* gs, int64_t c, bool ps, int64_t PH,
                    int64_t PW) {
  const int64_t nb = PH * PW;
  const int64_t co = ps ? c / nb : c;
  T acc = T(0);
  for (int64_t q = p; q < end; ++q) {
    const int64_t n = bins[q] / nb, k = bins[q] % nb;
    if (ps && k != c % nb) continue;
    const T gv = grad[n * gs[0] + co * gs[1] + (k / PW) * gs[2] + (k % PW) * gs[3]];
    acc += (gv * w[q]) / div[div_per_bin ? bins[q] : n];
  }
  return acc;
}

// grad_input index of target key k (= b*HW + pixel) in channel c, grad_input [N, C, H, W].
DK_HD int64_t roi_target_index(int64_t k, int64_t c, int64_t C, int64_t HW) {
  return ((k / HW) * C + c) * HW + k % HW;
}

// Coordinates (n, c, ph, pw) of forward item i over [K, Co, PH, PW] outputs. channels_inner
// (channels-last input): i = ((n*PH + ph)*PW + pw)*Co + c, so consecutive threads read consecutive
// channels of one bin (coalesced); otherwise i follows the output's own order.
DK_HD void roi_output_coords(int64_t i, int64_t Co, int64_t PH, int64_t PW, bool channels_inner,
                             int64_t& n, int64_t& c, int64_t& ph, int64_t& pw) {
  if (channels_inner) {
    c = i % Co;
    i /= Co;
    pw = i % PW;
    i /= PW;
    ph = i % PH;
    n = i / PH;
  } else {
    pw = i % PW;
    i /= PW;
    ph = i % PH;
    i /= PH;
    c = i % Co;
    n = i / Co;
  }
}

}  // namespace detkernels
