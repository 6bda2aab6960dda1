// The CUDA rotated RoIAlign forward kernel (roi_align_rotated_cuda.cu launches it); the backward
// is the generic scatter of roi_scatter_kernels.cuh instantiated with RoiAlignRotatedScatter.
#pragma once
#include "common/roi_scatter_kernels.cuh"
#include "ops/roi_align/roi_align_rotated_gpu.h"

namespace detkernels {

// One thread per output element (n, c, ph, pw), ordered as roi_output_coords; input read through
// element strides s0..s3.
template <typename T>
__global__ void roi_align_rotated_forward(const T* __restrict__ in, int64_t s0, int64_t s1,
                                          int64_t s2, int64_t s3, int64_t N, int64_t C, int64_t H,
                                          int64_t W, const T* __restrict__ rois, int64_t K, T ss,
                                          int64_t PH, int64_t PW, int64_t sr, int aligned,
                                          int clockwise, int channels_inner, T* __restrict__ out) {
  const int64_t st[4] = {s0, s1, s2, s3};
  DK_GRID_STRIDE(i, K * C * PH * PW) {
    int64_t n, c, ph, pw;
    roi_output_coords(i, C, PH, PW, channels_inner != 0, n, c, ph, pw);
    out[((n * C + c) * PH + ph) * PW + pw] = roi_rotated_output(
        in, st, N, H, W, rois, n, c, ph, pw, ss, PH, PW, sr, aligned != 0, clockwise != 0);
  }
}

}  // namespace detkernels
