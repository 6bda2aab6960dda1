// CUDA kernels of the deterministic RoI backward scatter (roi_scatter.h), generic over the policy
// P (RoiAlignScatter, PsRoiPoolScatter). Shared by the nvcc build (roi_align_cuda.cu,
// roi_pool_cuda.cu launch them and run the CUB sort between) and the CuPy backend (NVRTC compiles
// them from detkernels/backends/cupy/kernels.cu; CuPy sorts): one copy of the GPU code. No CUB and
// no std headers here. Kernel arguments are scalars and pointers only (CuPy passes no structs);
// every kernel is a grid-stride loop, so any grid size is correct.
#pragma once
#include "common/grid_stride.cuh"
#include "common/roi_scatter.h"

namespace detkernels {

#define DK_ROI_GEOM_PARAMS                                                                       \
  const typename P::Scalar *rois, typename P::Scalar ss, int64_t K, int64_t PH, int64_t PW,      \
      int64_t N, int64_t H, int64_t W, int64_t sr, int aligned, int ps
#define DK_ROI_GEOM_POLICY \
  const P pol { { rois, ss, K, PH, PW, N, H, W, sr, aligned != 0, ps != 0 } }

// Step 1a: off[n + 1] = slots of RoI n (off[0] = 0); the policy writes its divisors into div.
template <class P>
__global__ void roi_scatter_count(DK_ROI_GEOM_PARAMS, int64_t* __restrict__ off,
                                  typename P::Scalar* __restrict__ div) {
  DK_ROI_GEOM_POLICY;
  DK_GRID_STRIDE(n, K) {
    if (n == 0) off[0] = 0;
    off[n + 1] = pol.slots(n, div);
  }
}

// Step 1b: inclusive scan of off[1..K] in place, sequentially by one thread (integers: exact;
// K is RoI-sized). A template only so that every .cu including this header may define it; the
// CuPy backend uses cupy.cumsum instead.
template <typename I>
__global__ void roi_scatter_scan(I* off, int64_t K) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (int64_t n = 1; n <= K; ++n) off[n] += off[n - 1];
}

// Step 2: key of every slot s < M; seq[s] = s (the sort's values; may be null).
template <class P>
__global__ void roi_scatter_key(DK_ROI_GEOM_PARAMS, const int64_t* __restrict__ off, int64_t M,
                                int64_t* __restrict__ key, int64_t* __restrict__ seq) {
  DK_ROI_GEOM_POLICY;
  DK_GRID_STRIDE(s, M) {
    const int64_t n = roi_find(off, K, s);
    key[s] = pol.contrib(n, s - off[n]).key;
    if (seq) seq[s] = s;
  }
}

// Step 4: bins[q] = n*PH*PW + bin and w[q] of the slot seq[q] (seq = the stably sorted order).
template <class P>
__global__ void roi_scatter_decode(DK_ROI_GEOM_PARAMS, const int64_t* __restrict__ off, int64_t M,
                                   const int64_t* __restrict__ seq, int64_t* __restrict__ bins,
                                   typename P::Scalar* __restrict__ w) {
  DK_ROI_GEOM_POLICY;
  DK_GRID_STRIDE(q, M) {
    const int64_t s = seq[q], n = roi_find(off, K, s);
    const RoiContrib<typename P::Scalar> r = pol.contrib(n, s - off[n]);
    bins[q] = n * PH * PW + r.bin;
    w[q] = r.w;
  }
}

// Step 5: item i = c*M + p; the item at a run start p of the sorted keys skey writes grad_input
// [N, C, H, W] element (b, c, pixel) of the run's key; every other item does nothing.
template <typename T>
__global__ void roi_scatter_reduce(const int64_t* __restrict__ skey, const int64_t* __restrict__ bins,
                                   const T* __restrict__ w, const T* __restrict__ div,
                                   int div_per_bin, int64_t M, const T* __restrict__ grad,
                                   int64_t g0, int64_t g1, int64_t g2, int64_t g3, int64_t C,
                                   int64_t HW, int64_t none, int ps, int64_t PH, int64_t PW,
                                   T* __restrict__ gi) {
  const int64_t gs[4] = {g0, g1, g2, g3};
  DK_GRID_STRIDE(i, M * C) {
    const int64_t p = i % M, c = i / M;
    if (!roi_run_start(skey, p, none)) continue;
    gi[roi_target_index(skey[p], c, C, HW)] =
        roi_run_sum(bins, w, div, div_per_bin != 0, p, roi_run_end(skey, p, M), grad, gs, c,
                    ps != 0, PH, PW);
  }
}

}  // namespace detkernels
