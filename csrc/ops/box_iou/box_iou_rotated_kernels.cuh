// The GPU pairwise kernel of the rotated metrics (box_iou_rotated.h: RotatedIouMetric for
// box_iou(fmt='cxcywhr'), ProbIouMetric for probiou), shared by the nvcc build
// (box_iou_rotated_cuda.cu) and NVRTC: one thread per output element; a block stages the
// preparations (trig, bounds, covariance) of its kRotCols columns and kRotRows rows in shared
// memory, so each is computed once per block instead of once per pair. Exactness comes from the
// compile flags (--fmad=false, IEEE division); the trig is the device's double cos/sin, as in
// torchvision's CUDA kernel (docs/SPEC.md: rotated boxes on CUDA).
#pragma once
#include "ops/box_iou/box_iou_rotated.h"

namespace detkernels {

constexpr int kRotCols = 32, kRotRows = 8;  // block = (kRotCols, kRotRows) threads

// Grid: x = column tiles; y strides over row tiles, z over batches (no 65535-block limit on N, B).
// param: the metric's parameter (ProbIoU's eps; unused by the rotated IoU), a plain scalar so that
// NVRTC callers (the CuPy backend) can pass it.
template <typename Metric, typename T>
__global__ void rotated_matrix_kernel(const T* __restrict__ b1, const T* __restrict__ b2,
                                      typename Metric::Out* __restrict__ out, int64_t B, int64_t N,
                                      int64_t M, T param) {
  using Prep = typename Metric::Prep;
  const Metric metric = Metric::make(param);
  __shared__ T cols[kRotCols][5];
  __shared__ T rows[kRotRows][5];
  __shared__ Prep col_prep[kRotCols];
  __shared__ Prep row_prep[kRotRows];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kRotCols;
  const int64_t j = j0 + threadIdx.x;
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const T* B1 = b1 + 5 * b * N;
    const T* B2 = b2 + 5 * b * M;
    __syncthreads();  // the previous batch's columns are no longer read
    if (t < kRotCols && j0 + t < M) {
      for (int k = 0; k < 5; ++k) cols[t][k] = B2[5 * (j0 + t) + k];
      col_prep[t] = metric.prep(cols[t]);
    }
    // The row loop's bounds are uniform over the block, so every thread reaches the barriers.
    for (int64_t i0 = static_cast<int64_t>(blockIdx.y) * kRotRows; i0 < N;
         i0 += static_cast<int64_t>(gridDim.y) * kRotRows) {
      __syncthreads();  // the previous row tile is no longer read
      if (t < kRotRows && i0 + t < N) {
        for (int k = 0; k < 5; ++k) rows[t][k] = B1[5 * (i0 + t) + k];
        row_prep[t] = metric.prep(rows[t]);
      }
      __syncthreads();
      const int64_t i = i0 + threadIdx.y;
      if (i < N && j < M)
        out[(b * N + i) * M + j] = static_cast<typename Metric::Out>(
            metric.value(rows[threadIdx.y], cols[threadIdx.x], row_prep[threadIdx.y],
                         col_prep[threadIdx.x]));
    }
  }
}

}  // namespace detkernels
