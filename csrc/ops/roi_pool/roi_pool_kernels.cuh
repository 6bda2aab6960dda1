// The CUDA RoIPool / PSRoIPool kernels, shared by the nvcc build (roi_pool_cuda.cu launches them,
// with a CUB sort in the backward) and the CuPy backend (NVRTC compiles them from
// detkernels/backends/cupy/kernels.cu; CuPy sorts): one copy of the GPU code. Per-item logic in
// roi_pool_gpu.h; the PSRoIPool backward is roi_scatter_kernels.cuh with PsRoiPoolScatter.
#pragma once
#include "common/roi_scatter_kernels.cuh"
#include "ops/roi_pool/roi_pool_gpu.h"

namespace detkernels {

// One thread per output element, ordered as roi_output_coords; out and idx [K, Co, PH, PW].
template <typename T>
__global__ void roi_pool_forward(const T* __restrict__ in, int64_t s0, int64_t s1, int64_t s2,
                                 int64_t s3, int64_t N, int64_t Co, int64_t H, int64_t W,
                                 const T* __restrict__ rois, int64_t K, T ss, int64_t PH, int64_t PW,
                                 int ps, int channels_inner, T* __restrict__ out,
                                 int* __restrict__ idx) {
  const int64_t st[4] = {s0, s1, s2, s3};
  DK_GRID_STRIDE(i, K * Co * PH * PW) {
    int64_t n, c, ph, pw;
    roi_output_coords(i, Co, PH, PW, channels_inner != 0, n, c, ph, pw);
    const int64_t e = ((n * Co + c) * PH + ph) * PW + pw;
    int arg = -1;
    out[e] = roi_pool_output(in, st, N, H, W, rois, n, c, ph, pw, ss, PH, PW, ps != 0, &arg);
    idx[e] = arg;
  }
}

// RoIPool backward, keys: slot i = output element i of the M = K*C*PH*PW; seq[i] = i (may be null).
template <typename T>
__global__ void roi_pool_max_keys(const T* __restrict__ rois, const int* __restrict__ argmax,
                                  int64_t M, int64_t C, int64_t nb, int64_t N, int64_t HW,
                                  int64_t* __restrict__ key, int64_t* __restrict__ seq) {
  DK_GRID_STRIDE(i, M) {
    key[i] = roi_pool_max_key(rois, argmax, i, C, nb, N, HW);
    if (seq) seq[i] = i;
  }
}

// RoIPool backward, sums: the item at each run start p of the sorted keys writes grad_input
// element skey[p] (contiguous [N, C, H, W]); none = N*C*H*W.
template <typename T>
__global__ void roi_pool_max_reduce(const int64_t* __restrict__ skey, const int64_t* __restrict__ seq,
                                    int64_t M, int64_t none, const T* __restrict__ grad, int64_t g0,
                                    int64_t g1, int64_t g2, int64_t g3, int64_t C, int64_t PH,
                                    int64_t PW, T* __restrict__ gi) {
  const int64_t gs[4] = {g0, g1, g2, g3};
  DK_GRID_STRIDE(p, M) {
    if (!roi_run_start(skey, p, none)) continue;
    gi[skey[p]] = roi_pool_max_run_sum(seq, p, roi_run_end(skey, p, M), grad, gs, C, PH, PW);
  }
}

}  // namespace detkernels
